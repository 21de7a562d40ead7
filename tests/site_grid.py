"""A grid of TLS peers for the jobs-across-sites tests: a gated job script, and a starter of peers.

The gated script waits for a file ``gate`` in its proc directory (the test
creates it when it wants the input to finish), then writes what the tests
check: its input's bytes and its index.
"""
from __future__ import annotations

from pathlib import Path

from tests.conftest import PeerProcess, SitePki, free_port, host_session, secure_args

GATED = b"""#!/bin/sh
while [ ! -e gate ]; do sleep 0.2; done
cat "$1" > copy.txt
echo "$2" > index.txt
"""
GATED_SUB = "executable = gated.sh\narguments = $(input) $(input_index)\nqueue\n"


class PeerStarter:
    """``start(name, join=peer)``: a TLS peer with no agent and ``slots`` slots, its host session in
    ``.host``; every peer started is in ``started`` (the fixture stops them)."""

    def __init__(self, root: Path, site_pki: SitePki, env: dict[str, str], slots: int) -> None:
        self.root, self.site_pki, self.env, self.slots = root, site_pki, env, slots
        self.started: list[PeerProcess] = []

    def __call__(self, name: str, join: PeerProcess | None = None) -> PeerProcess:
        args = secure_args(self.site_pki, name, "--no-agent", "--threads", "8", "--slots", str(self.slots))
        if join is not None:
            args += ["--join", join.url]
        p = PeerProcess(name, self.root / name, free_port(), args, self.env).start()
        p.host = host_session(self.site_pki, name)
        self.started.append(p)
        return p
