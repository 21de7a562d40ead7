"""Print the results of run.py (JSON lines) as Markdown tables.

    python -m benchmarks.connection_model.table results/round1.jsonl [more.jsonl ...]

Several files (rounds) give ranges: ``min–max`` over the rounds of each number.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

SHORT = {"gunicorn-master": "gm", "gunicorn-worker": "gw", "aio-front": "front", "nginx-master": "ngm",
         "nginx-worker": "ngx"}


def rng(values: list[float | None], fmt: str = "{:,.0f}") -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "–"
    lo, hi = min(v), max(v)
    return fmt.format(lo) if lo == hi or len(v) == 1 else f"{fmt.format(lo)}–{fmt.format(hi)}"


def wrk_cell(runs: list[dict[str, Any]]) -> str:
    rps = [r.get("rps") for r in runs]
    p99 = [r.get("p99_ms") if r.get("rps") else None for r in runs]
    errs = sum(sum((r.get("errors") or {}).values()) for r in runs)
    if not any(rps):
        return "**0** (no answer)"
    cell = f"{rng(rps)} / {rng(p99, '{:.0f}')}"
    return cell + (f" ({errs} err)" if errs else "")


def cpu_cell(runs: list[dict[str, Any]]) -> str:
    roles: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        for role, c in (r.get("cpu_cores") or {}).items():
            roles[role].append(c)
    return " ".join(f"{SHORT.get(k, k)} {rng(v, '{:.2f}')}" for k, v in roles.items() if max(v) >= 0.02) or "0"


def us_cell(runs: list[dict[str, Any]]) -> str:
    """Server CPU per request (µs), all server processes together: what a request costs whatever the noise."""
    v = [sum((r.get("cpu_cores") or {}).values()) / r["rps"] * 1e6 for r in runs if r.get("rps")]
    return rng(v, "{:,.0f}") if v else "–"


def main(argv: list[str]) -> int:
    rounds = [[json.loads(ln) for ln in Path(p).read_text().splitlines() if ln.strip()] for p in argv]
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    order: list[str] = []
    loads: list[str] = ["base"]
    for rows in rounds:
        for row in rows:
            if row["candidate"] not in order:
                order.append(row["candidate"])
            by[(row["candidate"], "base")].append({**row["base"], "load": "base"})
            for name, m in row["loads"].items():
                if name not in loads:
                    loads.append(name)
                by[(row["candidate"], name)].append(m)
    print("| candidate | load held | conns up | new TLS conn /healthz (ok/tried, p50 ms) | /healthz req/s / p99 ms "
          "| auth 304 req/s / p99 ms | auth 200 req/s / p99 ms | CPU cores during /healthz "
          "| server CPU µs/req (/healthz; 304) | mem added (USS MiB) "
          "| load avg 1 min / other procs' cores |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cand in order:
        for load in loads:
            ms = by.get((cand, load))
            if not ms:
                continue
            up = []
            for m in ms:
                hs = m.get("holders_at_start") or {}
                up.append("+".join(str(v["up"]) for k, v in hs.items() if isinstance(v, dict)) or "")
            fresh = [m["fresh"] for m in ms]
            fresh_cell = "; ".join(f"{f['ok']}/{f['tried']}" + (f" {f['p50_ms']:.0f}" if f["p50_ms"] else "")
                                   for f in fresh)
            mem = [m.get("memory_added_uss_mib") for m in ms]
            a200 = wrk_cell([m["auth_200"] for m in ms]) if "auth_200" in ms[0] else ""
            la = [m["load_avg"][0] for m in ms]
            fc = [m["healthz"].get("foreign_cores_before") for m in ms]
            print(f"| {cand} | {load} | {', '.join(u for u in up if u) or '–'} | {fresh_cell} "
                  f"| {wrk_cell([m['healthz'] for m in ms])} | {wrk_cell([m['auth_304'] for m in ms])} | {a200} "
                  f"| {cpu_cell([m['healthz'] for m in ms])} "
                  f"| {us_cell([m['healthz'] for m in ms])}; {us_cell([m['auth_304'] for m in ms])} | {rng(mem, '{:.1f}') if load != 'base' else '–'} "
                  f"| {rng(la, '{:.1f}')} / {rng(fc, '{:.2f}')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
