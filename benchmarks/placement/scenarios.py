"""Named scenarios of issue 14: one 200-input job split over sites, and a site going down under it.

``python -m benchmarks.placement --scenario split-vs-whole`` (or ``site-loss``, or ``all``) prints
markdown tables; ``--json`` prints the rows instead.  Seeds are fixed (1 .. 20 unless
``--seed``/``--repeat`` say otherwise), so the tables reproduce exactly.

* ``split-vs-whole``: ``burst-job-200`` (the shipped burst as one job of 200 inputs on its idle
  six-peer grid): the job's makespan placed whole (the ranking's first takes it all) and split
  (``broker.split.split_inputs``); for context, the 200 one-input jobs of ``burst-200`` placed
  one by one, whole and split.  Target: split at least 2 x shorter than whole.
* ``site-loss``: ``burst-job-200-4sites``, split.  For each site other than the job's home, the
  same run with that site going down halfway through the run without a failure: the job's
  completion time with and without the failure, the detection delay, the inputs lost and their
  own run time.  Target: the failure costs less than the lost inputs' own run time plus one
  detection delay.  "Own run time" is taken two ways (both printed): the longest lost input's run
  where it ran again (one run, no wait: the strict reading), and the lost inputs' makespan as a
  job of their own, split over the surviving sites while these are idle (``alone``).
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, replace
from typing import Any, Callable

from .simulator import Manager, Simulation
from .workload import SimJob, Workload, load_workload

POLICY = "least-expected-load"
DEFAULT_SEEDS = range(1, 21)


# ---- split against whole ---------------------------------------------------------------
def split_vs_whole(seeds: range = DEFAULT_SEEDS, policy: str = POLICY, manager: Manager | None = None) -> dict[str, Any]:
    manager = manager or Manager()
    one = load_workload("burst-job-200")
    many = load_workload("burst-200")
    rows = []
    for seed in seeds:
        whole = Simulation(one, policy, seed, placement="whole").run(per_job=True)
        split = Simulation(one, policy, seed, placement="split", manager=manager).run(per_job=True)
        w, s = whole["per_job"][0], split["per_job"][0]
        works = one.jobs(seed)[0].works
        capacity = one.capacity()
        rows.append({
            "seed": seed,
            # no placement does better: the work over the grid's true capacity, or the longest run on the fastest
            "bound_s": round(max(sum(works) / capacity, max(works) / max(p.speed for p in one.peers)), 3),
            "whole_s": w["makespan_s"],
            "whole_on": ", ".join(w["shares"][0]),
            "split_s": s["makespan_s"],
            "shares": s["placed"],
            "first_round": s["shares"][0],
            "rounds": len(s["shares"]),
            "ratio": round(w["makespan_s"] / s["makespan_s"], 3),
        })
    context = {}
    for placement in ("whole", "split"):
        runs = [Simulation(many, policy, seed, placement=placement, manager=manager).run() for seed in seeds]
        context[placement] = {"makespan_s": round(statistics.mean(r["makespan_s"] for r in runs), 3),
                              "mean_response_s": round(statistics.mean(r["mean_response_s"] for r in runs), 3)}
    ratios = [r["ratio"] for r in rows]
    return {
        "scenario": "split-vs-whole", "workload": one.name, "policy": policy, "seeds": [seeds[0], seeds[-1]],
        "waves_ahead": manager.waves_ahead,
        "rows": rows,
        "summary": {
            "whole_mean_s": round(statistics.mean(r["whole_s"] for r in rows), 3),
            "split_mean_s": round(statistics.mean(r["split_s"] for r in rows), 3),
            "ratio_of_means": round(statistics.mean(r["whole_s"] for r in rows)
                                    / statistics.mean(r["split_s"] for r in rows), 3),
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_range": [min(ratios), max(ratios)],
            "target_met_seeds": sum(1 for x in ratios if x >= 2.0),
        },
        "burst-200": context,
    }


# ---- a site going down -------------------------------------------------------------------
def lost_alone(workload: Workload, policy: str, seed: int, job: SimJob, dead: str, indexes: list[int],
               manager: Manager | None = None) -> float:
    """Makespan of the inputs ``indexes`` of ``job`` as a job of their own, split over the sites other
    than ``dead`` while these are idle (with ``manager``'s split setting): what running them again costs
    with nothing in the way."""
    survivors = replace(workload, peers=tuple(p for p in workload.peers if p.name != dead))
    part = SimJob(0, job.arrival, job.entry, tuple(job.works[k] for k in indexes), job.shared_inputs(),
                  job.program, tuple(job.own_inputs(k) for k in indexes))
    run = Simulation(survivors, policy, seed, placement="split", jobs=[part], manager=manager).run(per_job=True)
    return run["per_job"][0]["makespan_s"]


def site_loss_run(workload: Workload, seed: int, site: str, *, policy: str = POLICY,
                  manager: Manager | None = None) -> dict[str, Any]:
    """The workload's first job split, once without a failure and once with ``site`` going down halfway."""
    manager = manager or Manager()
    base = Simulation(workload, policy, seed, placement="split", manager=manager)
    clean = base.run(per_job=True)["per_job"][0]
    job = base.jobs[0]
    down_at = job.arrival + clean["makespan_s"] / 2
    sim = Simulation(workload, policy, seed, placement="split", failures=[(site, down_at)], manager=manager)
    run = sim.run(per_job=True)
    hit = run["per_job"][0]
    delays = [loss["delay_s"] for loss in run["losses"]]
    lost = hit.get("lost_indexes", [])
    longest = hit.get("lost_longest_rerun_s", 0.0)
    alone = lost_alone(workload, policy, seed, job, site, lost, manager) if lost else 0.0
    cost = round(hit["makespan_s"] - clean["makespan_s"], 3)
    delay = max(delays, default=None)  # None: the site held nothing of the job any more
    return {
        "seed": seed, "site": site, "results_lost": manager.lose_results,
        "down_after_s": round(down_at - job.arrival, 3),
        "clean_s": clean["makespan_s"], "with_failure_s": hit["makespan_s"], "cost_s": cost,
        "detection_s": delay,
        "lost_inputs": hit["lost_inputs"], "lost_results": sum(loss["results"] for loss in run["losses"]),
        "failed_inputs": hit["failed_inputs"],
        "had": clean["placed"].get(site, 0),
        "rounds": len(clean["shares"]),
        # where the lost inputs ran again (their last attempts)
        "resplit": _count_sites(sim.attempts[job.id][k][-1].site for k in lost),
        "longest_rerun_s": longest, "alone_s": alone,
        "bound_strict_s": round(delay + longest, 3) if lost else None,
        "bound_alone_s": round(delay + alone, 3) if lost else None,
        # nothing lost: nothing to judge (the failure cost nothing)
        "met_strict": cost < delay + longest if lost else None,
        "met_alone": cost < delay + alone if lost else None,
    }


def site_loss(seeds: range = DEFAULT_SEEDS, policy: str = POLICY, manager: Manager | None = None) -> dict[str, Any]:
    """Every site but the home going down in turn; each with the results it held lost (what
    peer/records.py does while the job is unfinished) and, as a what-if, kept."""
    manager = manager or Manager()
    workload = load_workload("burst-job-200-4sites")
    home = workload.jobs(seeds[0])[0].entry
    sites = [p.name for p in workload.peers if p.name != home]
    rows = [site_loss_run(workload, seed, site, policy=policy, manager=replace(manager, lose_results=not keep))
            for keep in (False, True) for site in sites for seed in seeds]
    summary = []
    for keep in (False, True):
        for site in sites:
            mine = [r for r in rows if r["site"] == site and r["results_lost"] == (not keep)]
            hit = [r for r in mine if r["lost_inputs"]]
            summary.append({
                "site": site, "results_lost": not keep, "seeds": len(mine),
                "clean_mean_s": round(statistics.mean(r["clean_s"] for r in mine), 3),
                "with_failure_mean_s": round(statistics.mean(r["with_failure_s"] for r in mine), 3),
                "cost_mean_s": round(statistics.mean(r["cost_s"] for r in mine), 3),
                "cost_range": [min(r["cost_s"] for r in mine), max(r["cost_s"] for r in mine)],
                "lost_inputs_mean": round(statistics.mean(r["lost_inputs"] for r in mine), 1),
                "seeds_with_losses": len(hit),
                "detection_range": [min(r["detection_s"] for r in hit), max(r["detection_s"] for r in hit)],
                "longest_rerun_mean_s": round(statistics.mean(r["longest_rerun_s"] for r in hit), 3),
                "alone_mean_s": round(statistics.mean(r["alone_s"] for r in hit), 3),
                "met_strict_seeds": sum(r["met_strict"] for r in hit),
                "met_alone_seeds": sum(r["met_alone"] for r in hit),
                "worst_margin_strict_s": round(min(r["bound_strict_s"] - r["cost_s"] for r in hit), 3),
                "worst_margin_alone_s": round(min(r["bound_alone_s"] - r["cost_s"] for r in hit), 3),
            })
    return {"scenario": "site-loss", "workload": workload.name, "policy": policy, "home": home,
            "seeds": [seeds[0], seeds[-1]], "manager": asdict(manager), "rows": rows, "summary": summary}


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {"split-vs-whole": split_vs_whole, "site-loss": site_loss}


# ---- tables -------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _shares(shares: dict[str, int]) -> str:
    return ", ".join(f"{site} {n}" for site, n in shares.items())


def render(result: dict[str, Any]) -> str:
    """A scenario's result as markdown tables."""
    if result["scenario"] == "split-vs-whole":
        s = result["summary"]
        out = [f"split-vs-whole: {result['workload']}, {result['policy']}, seeds {result['seeds'][0]}-"
               f"{result['seeds'][1]}, split_waves_ahead {_waves(result['waves_ahead'])} (makespan: submission "
               f"to the last input's end)", ""]
        out.append(_table(["seed", "whole (s)", "whole on", "split (s)", "whole / split", "bound (s)",
                           "split's rounds", "split's inputs per site"],
                          [[r["seed"], f"{r['whole_s']:.1f}", r["whole_on"], f"{r['split_s']:.1f}",
                            f"{r['ratio']:.2f}", f"{r['bound_s']:.1f}", r["rounds"], _shares(r["shares"])]
                           for r in result["rows"]]))
        out += ["", f"means: whole {s['whole_mean_s']:.1f} s, split {s['split_mean_s']:.1f} s = "
                    f"{s['ratio_of_means']:.2f} x; per seed median {s['ratio_median']:.2f} x, range "
                    f"{s['ratio_range'][0]:.2f}-{s['ratio_range'][1]:.2f} x; at least 2 x in "
                    f"{s['target_met_seeds']} of {len(result['rows'])} seeds",
                f"context, burst-200 (the same 200 runs as 200 one-input jobs, placed one by one), mean makespan: "
                f"whole {result['burst-200']['whole']['makespan_s']:.1f} s, split "
                f"{result['burst-200']['split']['makespan_s']:.1f} s"]
        return "\n".join(out)
    out = [f"site-loss: {result['workload']}, split (split_waves_ahead {_waves(result['manager']['waves_ahead'])}), "
           f"{result['policy']}, home {result['home']}; a site goes down "
           f"halfway through the run without a failure (site_lost_after {result['manager']['site_lost_after']:g} s, "
           f"monitor_interval {result['manager']['monitor_interval']:g} s, backoff "
           f"{result['manager']['retry_backoff']:g} s)", ""]
    first = result["seeds"][0]
    rows = [r for r in result["rows"] if r["seed"] == first]
    out.append(f"seed {first}:")
    out.append("")
    out.append(_table(
        ["site down", "results there", "down at (s)", "no failure (s)", "with failure (s)", "cost (s)",
         "detection (s)", "lost inputs (results)", "longest re-run (s)", "alone (s)",
         "cost < detection + longest re-run", "cost < detection + alone", "re-split"],
        [[r["site"], "lost" if r["results_lost"] else "kept", f"{r['down_after_s']:.1f}", f"{r['clean_s']:.1f}",
          f"{r['with_failure_s']:.1f}", f"{r['cost_s']:.1f}", _num(r["detection_s"]),
          f"{r['lost_inputs']} ({r['lost_results']})", f"{r['longest_rerun_s']:.1f}", f"{r['alone_s']:.1f}",
          _verdict(r["met_strict"], r["bound_strict_s"]), _verdict(r["met_alone"], r["bound_alone_s"]),
          _shares(r["resplit"])] for r in rows]))
    n = result["seeds"][1] - result["seeds"][0] + 1
    out += ["", f"seeds {result['seeds'][0]}-{result['seeds'][1]}, means (ranges); the last five columns over the "
                f"seeds where the site still held inputs of the job:", ""]
    out.append(_table(
        ["site down", "results there", "no failure (s)", "with failure (s)", "cost (s)", "lost inputs",
         "seeds with losses", "detection (s)", "longest re-run (s)", "alone (s)", "met (strict), worst margin",
         "met (alone), worst margin"],
        [[r["site"], "lost" if r["results_lost"] else "kept", f"{r['clean_mean_s']:.1f}",
          f"{r['with_failure_mean_s']:.1f}",
          f"{r['cost_mean_s']:.1f} ({r['cost_range'][0]:.0f}-{r['cost_range'][1]:.0f})",
          f"{r['lost_inputs_mean']:.1f}", f"{r['seeds_with_losses']} of {n}",
          f"{r['detection_range'][0]:.1f}-{r['detection_range'][1]:.1f}",
          f"{r['longest_rerun_mean_s']:.1f}", f"{r['alone_mean_s']:.1f}",
          f"{r['met_strict_seeds']} of {r['seeds_with_losses']}, {r['worst_margin_strict_s']:+.1f} s",
          f"{r['met_alone_seeds']} of {r['seeds_with_losses']}, {r['worst_margin_alone_s']:+.1f} s"]
         for r in result["summary"]]))
    return "\n".join(out)


def _waves(value: int | None) -> str:
    return "none (no cap)" if value is None else str(value)


def _count_sites(sites: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for site in sites:
        out[site or "-"] = out.get(site or "-", 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _verdict(met: bool | None, bound: float | None) -> str:
    if met is None:
        return "nothing lost"
    return f"{'met' if met else 'missed'} ({bound:.1f})"
