"""Command line: run the placement simulator and print JSON (or a named scenario's tables).

    python -m benchmarks.placement --policy least-expected-load --workload steady-80 --seed 1
    python -m benchmarks.placement --policy all --workload burst-200 --seed 1 --repeat 5
    python -m benchmarks.placement --policy least-expected-load --workload burst-job-200 --placement split --per-job
    python -m benchmarks.placement --policy least-expected-load --workload burst-job-200-4sites --placement split \\
        --fail campus-pool@180
    python -m benchmarks.placement --scenario split-vs-whole      # or site-loss, or all

``--workload`` takes a file, or the name of a shipped workload
(``benchmarks/placement/workloads/<name>.json``).  One policy and one seed
print that run's summary; ``--policy all`` and/or ``--repeat K`` (seeds N ..
N+K-1) print ``{"runs": [...], "summary": {policy: means over seeds}}``.
``--scenario`` runs the named scenarios of benchmarks/placement/scenarios.py
(seeds 1-20 unless ``--seed``/``--repeat`` say otherwise) and prints tables.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from broker.placement import POLICIES

from .scenarios import SCENARIOS, render
from .simulator import ORACLE, PLACEMENTS, Manager, simulate
from .workload import WorkloadError, load_workload

ALL = [*POLICIES, ORACLE]
#: Metrics averaged over seeds in the summary.
AVERAGED = ("mean_response_s", "p95_response_s", "makespan_s", "bytes_moved")


def _failure(text: str) -> tuple[str, float]:
    site, sep, at = text.rpartition("@")
    try:
        if not sep or not site:
            raise ValueError
        return site, float(at)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SITE@SECONDS, e.g. campus-pool@180") from None


def _waves(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number >= 0, or none") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.placement", description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"],
                   help="run a named scenario (tables; --policy and --workload are then not needed)")
    p.add_argument("--json", action="store_true", help="with --scenario: print the rows as JSON, not tables")
    p.add_argument("--policy", help=f"one of {', '.join(ALL)}, a comma-separated list, or 'all'")
    p.add_argument("--workload", help="workload JSON file, or a shipped workload's name")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 1)")
    p.add_argument("--repeat", type=int, default=None,
                   help="run seeds seed .. seed+repeat-1 (default 1; for a scenario 20)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a constructor option of the policy, e.g. cap_slack=0 (repeatable; numbers only)")
    p.add_argument("--placement", choices=PLACEMENTS, default="whole",
                   help="whole: the ranking's first takes a job (default); split: broker.split over the sites")
    p.add_argument("--fail", action="append", default=[], type=_failure, metavar="SITE@SECONDS",
                   help="the site goes down for good at that simulated time (repeatable)")
    p.add_argument("--site-lost-after", type=float, default=Manager.site_lost_after,
                   help=f"seconds a home waits for a silent site (default {Manager.site_lost_after:g})")
    p.add_argument("--monitor-interval", type=float, default=Manager.monitor_interval,
                   help=f"seconds between a home's status rounds (default {Manager.monitor_interval:g})")
    p.add_argument("--waves-ahead", type=_waves, default=Manager.waves_ahead, metavar="N|none",
                   help=f"late binding: a split gives a site its free slots plus at most N waves of queue, the "
                        f"rest later (default {Manager.waves_ahead}; none: every input at once)")
    p.add_argument("--keep-results", action="store_true",
                   help="a site going down keeps the results it held (default: lost while their job is unfinished)")
    p.add_argument("--per-job", action="store_true", help="each job's makespan, shares and losses too")
    args = p.parse_args(argv)
    args.seed = 1 if args.seed is None else args.seed
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be >= 1")
    try:
        args.manager = Manager(monitor_interval=args.monitor_interval, site_lost_after=args.site_lost_after,
                               lose_results=not args.keep_results, waves_ahead=args.waves_ahead)
    except ValueError as exc:
        p.error(str(exc))
    if args.scenario:
        args.repeat = args.repeat or 20
        return args
    args.repeat = args.repeat or 1
    if not args.policy or not args.workload:
        p.error("give --policy and --workload, or --scenario")
    args.policies = ALL if args.policy == "all" else [x.strip() for x in args.policy.split(",") if x.strip()]
    unknown = [x for x in args.policies if x not in ALL]
    if unknown:
        p.error(f"unknown policy {', '.join(unknown)}; choose from {', '.join(ALL)} or 'all'")
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
    seeds = range(args.seed, args.seed + args.repeat)
    if args.scenario:
        names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
        results = []
        for name in names:
            kwargs: dict[str, Any] = {"seeds": seeds, "manager": args.manager}
            results.append(SCENARIOS[name](**kwargs))
        if args.json:
            print(json.dumps(results if len(results) > 1 else results[0], indent=2))
        else:
            print("\n\n".join(render(r) for r in results))
        return 0
    try:
        workload = load_workload(args.workload)
    except WorkloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options: dict[str, Any] = dict(args.options)
    if args.placement != "whole":
        options["placement"] = args.placement
    if args.fail:
        options["failures"] = args.fail
    if args.fail or args.placement == "split":
        options["manager"] = args.manager
    try:
        runs = [simulate(workload, policy, seed, per_job=args.per_job, **options)
                for seed in seeds for policy in args.policies]
    except (TypeError, ValueError) as exc:  # an option the policy does not take; a site that cannot fail
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(runs) == 1:
        print(json.dumps(runs[0], indent=2))
    else:
        print(json.dumps({"runs": runs, "summary": summarize(runs)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
