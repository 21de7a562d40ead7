"""Client commands of the ``pocketgrid`` CLI: files, submit, status, kill, outputs, fetch, jobs, system."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from .client import ApiError, Client
from .transfer import DownloadFailed, IntegrityError

ENV_PEERS = "POCKETGRID_PEERS"


def add_peer_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--peer",
        default=os.environ.get(ENV_PEERS, "http://127.0.0.1:8650"),
        help=f"peer URL(s), comma separated; tried in order (env {ENV_PEERS})",
    )
    p.add_argument("--json", action="store_true", help="print raw JSON")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("files", help="browse, wildcard-search or search inside the publishing area")
    add_peer_option(p)
    p.add_argument("path", nargs="?", default="", help="directory to list")
    p.add_argument("--glob", help="wildcard, e.g. '*.txt' or 'runs/**/*.dat'")
    p.add_argument("--grep", help="text to search inside files")
    p.add_argument("--regex", action="store_true", help="--grep is a regular expression")
    p.add_argument("-i", "--ignore-case", action="store_true")
    p.set_defaults(func=cmd_files)

    p = sub.add_parser("submit", help="submit a job: one proc per input file")
    add_peer_option(p)
    p.add_argument("--name", required=True, help="job name")
    p.add_argument("--executable", required=True, type=Path)
    p.add_argument("--submit-file", required=True, type=Path, help="HTCondor submit file; use $(input) and $(input_index)")
    p.add_argument("--idempotency-key", help="reuse to retry a submit safely (default: a new UUID)")
    p.add_argument("inputs", nargs="+", help="input files (paths in the publishing area)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="status of a job (or of all your jobs)")
    add_peer_option(p)
    p.add_argument("job", nargs="?")
    p.add_argument("--wait", action="store_true", help="follow the job until it finishes (long-polls)")
    p.add_argument("--system", action="store_true", help="show the broker, epoch and members instead")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("kill", help="remove a job's procs")
    add_peer_option(p)
    p.add_argument("job")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("outputs", help="list a job's output files with size and SHA-256")
    add_peer_option(p)
    p.add_argument("job")
    p.set_defaults(func=cmd_outputs)

    p = sub.add_parser("fetch", help="download outputs (resumable: run again after an interruption)")
    add_peer_option(p)
    p.add_argument("job")
    p.add_argument("file", nargs="?", help="INDEX/NAME of one output; default: all")
    p.add_argument("-o", "--dest", type=Path, default=Path("."), help="destination directory")
    p.add_argument("--chunk", type=int, default=1024 * 1024, help="checkpoint every N bytes (default 1 MiB)")
    p.add_argument("--limit-rate", type=_rate, help="cap the speed, e.g. 500K or 2M (bytes/s)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_fetch)


def _rate(text: str) -> int:
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
    number, unit = text.rstrip("KMGkmg"), text[len(text.rstrip("KMGkmg")):].upper()
    try:
        value = int(float(number) * units[unit])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (examples: 500K, 2M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the rate must be positive")
    return value


def run(args: argparse.Namespace) -> int:
    client = Client(args.peer)
    try:
        return args.func(client, args)
    except ApiError as exc:
        print(f"error: {exc.message} (HTTP {exc.status})", file=sys.stderr)
        return 1
    except (DownloadFailed, IntegrityError, ConnectionError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _print(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2) if args.json else text(data))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_files(c: Client, args: argparse.Namespace) -> int:
    if args.grep:
        res = c.grep(args.grep, glob=args.glob or "*", regex=args.regex, ignore_case=args.ignore_case)
        _print(args, res, lambda r: "\n".join(f"{m['path']}:{m['line']}: {m['text']}" for m in r["matches"])
               + ("\n(more matches not shown)" if r["truncated"] else ""))
        return 0
    files = c.glob(args.glob) if args.glob else c.files(args.path)
    _print(args, files, lambda fs: "\n".join(
        f"{'d' if f['type'] == 'dir' else '-'} {_size(f['size']):>10}  {f['path']}" for f in fs))
    return 0


def cmd_submit(c: Client, args: argparse.Namespace) -> int:
    job = c.submit(args.name, args.executable, args.submit_file, args.inputs, idempotency_key=args.idempotency_key)
    _print(args, job, lambda j: f"{j['id']}  on {j['peer']}, {j.get('inputs', '?')} inputs"
           + "".join(f"\nwarning: {w}" for w in j.get("warnings", [])))
    return 0


def _status_text(s: dict[str, Any]) -> str:
    lines = [f"{s['id']} ({s['name']}) on {s['peer']}: {s['state']}  " + ", ".join(f"{k} {v}" for k, v in s["counts"].items())]
    for i in s["inputs"]:
        extra = ""
        if i.get("exit_code") is not None:
            extra = f" exit {i['exit_code']}"
        if i.get("signal") is not None:
            extra = f" signal {i['signal']}"
        if i.get("hold_reason"):
            extra += f" ({i['hold_reason']})"
        elif i.get("note"):
            extra += f" ({i['note']})"
        lines.append(f"  [{i['index']}] {i['input']}: {i['state']}{extra}")
    return "\n".join(lines)


def cmd_status(c: Client, args: argparse.Namespace) -> int:
    if args.system:
        _print(args, c.system(), lambda s: "\n".join(
            [f"broker: {s['broker']['name'] if s.get('broker') else '?'} (epoch {s.get('epoch')})"]
            + [f"  {m['seq']:>3} {m['name']}  {m['url']}" for m in s.get("members", [])]))
        return 0
    if not args.job:
        jobs = c.jobs()
        _print(args, jobs, lambda js: "\n".join(f"{j['id']:<40} {j['state']:<10} {j['name']}" for j in js) or "no jobs")
        return 0
    if args.wait:
        final = c.wait(args.job, on_change=lambda s: None if args.json else print(_status_text(s), flush=True))
        if args.json:
            print(json.dumps(final, indent=2))
        return 0 if final["state"] == "completed" else 1
    status, _ = c.status(args.job)
    _print(args, status, _status_text)
    return 0


def cmd_kill(c: Client, args: argparse.Namespace) -> int:
    res = c.kill(args.job)
    _print(args, res, lambda r: f"{r['id']}: removed {r['removed_procs']} procs")
    return 0


def cmd_outputs(c: Client, args: argparse.Namespace) -> int:
    res = c.outputs(args.job)

    def text(r: dict[str, Any]) -> str:
        lines = []
        for o in r["outputs"]:
            lines.append(f"[{o['index']}] {o['input']} ({o['state']})")
            lines += [f"    {_size(f['size']):>10}  {f['sha256'][:16]}…  {o['index']}/{f['name']}" for f in o["files"]]
        return "\n".join(lines)

    _print(args, res, text)
    return 0


def _bar_factory(enabled: bool):
    def factory(label: str, total: int):
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False, disable=not enabled)
        state = {"last": 0}

        def progress(done: int, _total: int | None) -> None:
            bar.update(done - state["last"])
            state["last"] = done
            if _total is not None and done >= _total:
                bar.close()

        return progress

    return factory


def cmd_fetch(c: Client, args: argparse.Namespace) -> int:
    show = not args.no_progress and sys.stderr.isatty()
    if args.file:
        index, _, name = args.file.partition("/")
        if not index.isdigit() or not name:
            print("error: give the output as INDEX/NAME, e.g. 0/histogram.json", file=sys.stderr)
            return 2
        dest = args.dest / index / name
        res = c.fetch(args.job, int(index), name, dest, chunk_bytes=args.chunk, rate_limit=args.limit_rate,
                      progress=_bar_factory(show)(args.file, 0))
        results = [res]
    else:
        results = c.fetch_all(args.job, args.dest, chunk_bytes=args.chunk, rate_limit=args.limit_rate,
                              progress_factory=_bar_factory(show))
    for r in results:
        resumed = f" (resumed at byte {r.resumed_from})" if r.resumed_from else ""
        print(f"{r.path}  {r.size} bytes  sha256 {r.sha256}  verified{resumed}")
    return 0
