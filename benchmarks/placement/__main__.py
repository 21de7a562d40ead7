"""Command line: run the placement simulator and print JSON.

    python -m benchmarks.placement --policy least-expected-load --workload steady-80 --seed 1
    python -m benchmarks.placement --policy all --workload burst-200 --seed 1 --repeat 5

``--workload`` takes a file, or the name of a shipped workload
(``benchmarks/placement/workloads/<name>.json``).  One policy and one seed
print that run's summary; ``--policy all`` and/or ``--repeat K`` (seeds N ..
N+K-1) print ``{"runs": [...], "summary": {policy: means over seeds}}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from broker.placement import POLICIES

from .simulator import ORACLE, simulate
from .workload import WorkloadError, load_workload

ALL = [*POLICIES, ORACLE]
#: Metrics averaged over seeds in the summary.
AVERAGED = ("mean_response_s", "p95_response_s", "makespan_s", "bytes_moved")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.placement", description=__doc__.splitlines()[0])
    p.add_argument("--policy", required=True, help=f"one of {', '.join(ALL)}, a comma-separated list, or 'all'")
    p.add_argument("--workload", required=True, help="workload JSON file, or a shipped workload's name")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--repeat", type=int, default=1, help="run seeds seed .. seed+repeat-1 (default 1)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a constructor option of the policy, e.g. cap_slack=0 (repeatable; numbers only)")
    args = p.parse_args(argv)
    args.policies = ALL if args.policy == "all" else [x.strip() for x in args.policy.split(",") if x.strip()]
    unknown = [x for x in args.policies if x not in ALL]
    if unknown:
        p.error(f"unknown policy {', '.join(unknown)}; choose from {', '.join(ALL)} or 'all'")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    args.options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        try:
            args.options[key.strip()] = float(value)
        except ValueError:
            p.error(f"--option {item!r}: expected KEY=NUMBER")
        if not sep:
            p.error(f"--option {item!r}: expected KEY=NUMBER")
    if args.options and (len(args.policies) != 1 or args.policies[0] == ORACLE):
        p.error("--option applies to exactly one broker policy")
    return args


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per policy: the mean of each metric over the seeds run, and its [min, max]."""
    out: dict[str, dict[str, Any]] = {}
    for policy in dict.fromkeys(r["policy"] for r in runs):
        mine = [r for r in runs if r["policy"] == policy]
        row: dict[str, Any] = {"seeds": len(mine)}
        for m in AVERAGED:
            values = [r[m] for r in mine]
            row[m] = round(sum(values) / len(values), 3)
            row[f"{m}_range"] = [min(values), max(values)]
        for program in mine[0].get("programs", {}):  # several programs: each one's responses too
            for m in ("mean_response_s", "p95_response_s"):
                values = [r["programs"][program][m] for r in mine]
                row[f"{program}_{m}"] = round(sum(values) / len(values), 3)
        out[policy] = row
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        workload = load_workload(args.workload)
    except WorkloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seeds = range(args.seed, args.seed + args.repeat)
    try:
        runs = [simulate(workload, policy, seed, **args.options) for seed in seeds for policy in args.policies]
    except TypeError as exc:  # an option the policy does not take
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(runs) == 1:
        print(json.dumps(runs[0], indent=2))
    else:
        print(json.dumps({"runs": runs, "summary": summarize(runs)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
