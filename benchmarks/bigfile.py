"""A real job whose output is one big file of random bytes (shared by download_goodput and client_rss)."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mobile_client import Client

from .harness import GiB, Peer, wait_job, write_random_file

MIN_FREE_BYTES = 5 * GiB


def free_bytes(path: str | Path) -> int:
    p = Path(path)
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def big_output_script(size: int, name: str = "big.bin") -> bytes:
    # /dev/urandom: incompressible real data, ~300 MB/s here; the file is a real output of a real job.
    return f"#!/bin/sh\nhead -c {int(size)} /dev/urandom > {name}\n".encode()


@dataclass
class BigOutput:
    job_id: str
    index: int
    name: str
    size: int
    sha256: str
    url: str  #: the output's download URL on the owning peer
    path: Path  #: where the peer keeps it (to delete it afterwards)
    job_seconds: float  #: submit to completed
    first_listing_seconds: float  #: first GET .../outputs (the peer hashes the file once)


def make_big_output(peer: Peer, size: int, *, name: str = "big.bin", timeout: float = 300.0) -> BigOutput:
    """Submit a one-input job to ``peer`` that writes ``size`` random bytes to ``name``; wait for it."""
    write_random_file(peer.publish / "seed.txt", 16)
    client = Client(peer.url)
    t0 = time.monotonic()
    job = client.submit("bench-big-output", big_output_script(size, name), "big.sub", ["seed.txt"],
                        executable_name="make_big.sh", submit_text="executable = make_big.sh\nqueue\n")
    final = wait_job(peer.url, job["id"], timeout=timeout, session=client.session)
    job_seconds = time.monotonic() - t0
    if final["state"] != "completed":
        raise RuntimeError(f"the job that writes the big output ended {final['state']}: {final}")
    t1 = time.monotonic()
    outs = client.outputs(job["id"])["outputs"]
    listing = time.monotonic() - t1
    f = next((f for f in outs[0]["files"] if f["name"] == name), None)
    if f is None or f["size"] != size:
        raise RuntimeError(f"the job did not leave a {size}-byte {name}: {outs}")
    history, _ = client.status(job["id"], history=True)  # the piece holding input 0 (one peer: here)
    piece = next(a["piece"] for a in reversed(history["inputs"][0]["attempts"]) if a["result"])
    return BigOutput(
        job_id=job["id"], index=0, name=name, size=size, sha256=f["sha256"],
        url=f"{peer.url}/api/v1/jobs/{job['id']}/outputs/0/{name}",
        path=peer.stage / piece / "0" / name, job_seconds=job_seconds, first_listing_seconds=listing,
    )
