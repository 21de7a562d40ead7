"""Workload files for the placement simulator: load, validate, generate jobs.

A workload is a JSON object (format in ``benchmarks/placement/README.md``):
the peers (slots, speed, what their agent reports), a bandwidth matrix, and
job streams (Poisson arrivals or bursts) with distributions for each job's
procs, run time and inputs.  Generation is a pure function of the workload
and a seed, so every policy is measured on the very same jobs.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

WORKLOADS_DIR = Path(__file__).resolve().parent / "workloads"
REPORT_MODES = ("pool", "host")


class WorkloadError(ValueError):
    """The workload file is malformed; the message says where."""


@dataclass(frozen=True)
class PeerSpec:
    name: str
    slots: int
    speed: float = 1.0  #: work units per second per slot (1.0 = the reference clock)
    #: "pool": the agent reports pool figures (running + queued procs, slots);
    #: "host": only host metrics, from which a LocalExecutor's queue is invisible.
    reports: str = "pool"


@dataclass(frozen=True)
class SimJob:
    id: int
    arrival: float
    entry: str
    works: tuple[float, ...]  #: per proc, seconds at speed 1.0
    inputs: tuple[tuple[str, int], ...]  #: (holding peer, bytes): files of the whole job (every proc reads them)
    #: The executable it runs (the job template's ``program``, else its stream's): the history key.
    program: str = ""
    #: Per proc, its own input files (``"each_proc": true`` in the template): (holding peer, bytes).
    proc_inputs: tuple[tuple[tuple[str, int], ...], ...] = ()

    @property
    def all_inputs(self) -> tuple[tuple[str, int], ...]:
        """Every file the whole job reads: the job's, then each proc's own."""
        return self.inputs + tuple(f for files in self.proc_inputs for f in files)

    @property
    def input_bytes(self) -> dict[str, int]:
        """Bytes per holding peer, as the broker's JobRequest carries them."""
        out: dict[str, int] = {}
        for holder, nbytes in self.all_inputs:
            out[holder] = out.get(holder, 0) + nbytes
        return out

    def own_inputs(self, index: int) -> tuple[tuple[str, int], ...]:
        """The files proc ``index`` reads alone (a one-proc job: all of the job's)."""
        own = self.proc_inputs[index] if self.proc_inputs else ()
        return own + (self.inputs if len(self.works) == 1 else ())

    def shared_inputs(self) -> tuple[tuple[str, int], ...]:
        """The files every proc of a job of several procs reads (moved to every site running a part)."""
        return self.inputs if len(self.works) > 1 else ()


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    report_interval: float
    peers: tuple[PeerSpec, ...]
    default_bandwidth: float
    links: Mapping[tuple[str, str], float]
    streams: tuple[Mapping[str, Any], ...]
    #: Reports carry the peers' learned run times (``runtimes``), as peers of this version send them.
    runtime_reports: bool = True

    @property
    def peer_names(self) -> list[str]:
        return [p.name for p in self.peers]

    def bandwidth(self, src: str, dst: str) -> float:
        """True bytes/s from ``src`` to ``dst`` (what transfers really take)."""
        return self.links.get((src, dst), self.default_bandwidth)

    def capacity(self) -> float:
        """Work units per second the whole grid can do: sum of slots x speed."""
        return sum(p.slots * p.speed for p in self.peers)

    def jobs(self, seed: int) -> list[SimJob]:
        """Every job of every stream, by arrival time; a pure function of the seed."""
        rng = random.Random(f"workload:{self.name}:{seed}")
        raw: list[tuple[Any, ...]] = []
        for i, stream in enumerate(self.streams):
            where = f"streams[{i}]"
            program = str(stream["job"].get("program") or f"stream{i}")
            for t in self._arrivals(stream, rng, where):
                entry, works, inputs, per_proc = self._job(stream, rng, where)
                raw.append((t, entry, works, inputs, program, per_proc))
        raw.sort(key=lambda r: r[0])
        return [SimJob(i, t, entry, works, inputs, program, per_proc)
                for i, (t, entry, works, inputs, program, per_proc) in enumerate(raw)]

    # ---- generation ----------------------------------------------------------
    def _arrivals(self, stream: Mapping[str, Any], rng: random.Random, where: str) -> list[float]:
        if stream["type"] == "burst":
            at = float(stream.get("at", 0.0))
            spacing = float(stream.get("spacing", 0.0))
            return [at + k * spacing for k in range(int(stream["count"]))]
        start = float(stream.get("start", 0.0))
        end = start + float(stream["duration"])
        rate = self.stream_rate(stream)
        times, t = [], start
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                return times
            times.append(t)

    def stream_rate(self, stream: Mapping[str, Any]) -> float:
        """Jobs per second of a Poisson stream (``rate``, or from ``utilisation``)."""
        if "rate" in stream:
            return float(stream["rate"])
        job = stream["job"]
        work_per_job = dist_mean(job.get("procs", 1)) * dist_mean(job["work"])
        return float(stream["utilisation"]) * self.capacity() / work_per_job

    def _job(self, stream: Mapping[str, Any], rng: random.Random, where: str):
        job = stream["job"]
        entry = self._pick_peer(stream.get("entry", "any"), rng, None)
        procs = max(1, round(sample(job.get("procs", 1), rng)))
        works = tuple(max(0.001, sample(job["work"], rng)) for _ in range(procs))
        inputs = []
        per_proc: list[list[tuple[str, int]]] = [[] for _ in works]
        for spec in job.get("inputs", []):
            for files in (per_proc if spec.get("each_proc") else [inputs]):
                holder = self._pick_peer(spec.get("on", "entry"), rng, entry)
                files.append((holder, max(0, int(sample(spec["bytes"], rng)))))
        proc_inputs = tuple(tuple(files) for files in per_proc) if any(per_proc) else ()
        return entry, works, tuple(inputs), proc_inputs

    def _pick_peer(self, on: str | Sequence[str], rng: random.Random, entry: str | None) -> str:
        if on == "entry" and entry is not None:
            return entry
        if on == "any":
            return rng.choice(self.peer_names)
        if isinstance(on, str):
            return on
        return rng.choice(list(on))


# ---- distributions --------------------------------------------------------------
def sample(spec: Any, rng: random.Random) -> float:
    """One draw: a number is a constant; otherwise ``{"dist": ..., ...}``."""
    if isinstance(spec, (int, float)):
        return float(spec)
    kind = spec["dist"]
    if kind == "exp":
        return rng.expovariate(1.0 / float(spec["mean"]))
    if kind == "uniform":
        return rng.uniform(float(spec["low"]), float(spec["high"]))
    if kind == "lognormal":
        return rng.lognormvariate(math.log(float(spec["median"])), float(spec["sigma"]))
    if kind == "choice":
        return float(rng.choice(spec["values"]))
    if kind == "pareto":
        value = float(spec["scale"]) * rng.paretovariate(float(spec["alpha"]))
        return min(value, float(spec["max"])) if "max" in spec else value
    raise WorkloadError(f"unknown distribution {kind!r}")


def dist_mean(spec: Any) -> float:
    if isinstance(spec, (int, float)):
        return float(spec)
    kind = spec["dist"]
    if kind == "exp":
        return float(spec["mean"])
    if kind == "uniform":
        return (float(spec["low"]) + float(spec["high"])) / 2
    if kind == "lognormal":
        return float(spec["median"]) * math.exp(float(spec["sigma"]) ** 2 / 2)
    if kind == "choice":
        return sum(float(v) for v in spec["values"]) / len(spec["values"])
    if kind == "pareto":  # E[min(X, max)] = scale + integral of (scale/x)^alpha from scale to max
        xm, a = float(spec["scale"]), float(spec["alpha"])
        cap = float(spec.get("max", math.inf))
        if a == 1.0:
            return xm + xm * math.log(cap / xm)
        return xm + xm ** a * (cap ** (1 - a) - xm ** (1 - a)) / (1 - a)
    raise WorkloadError(f"unknown distribution {kind!r}")


# ---- loading and validation -------------------------------------------------------
_DIST_FIELDS = {"exp": ("mean",), "uniform": ("low", "high"), "lognormal": ("median", "sigma"), "choice": ("values",),
                "pareto": ("scale", "alpha")}


def _check_dist(spec: Any, where: str) -> None:
    if isinstance(spec, bool):
        raise WorkloadError(f"{where}: expected a number or a distribution object")
    if isinstance(spec, (int, float)):
        if spec < 0:
            raise WorkloadError(f"{where}: must be >= 0")
        return
    if not isinstance(spec, dict) or spec.get("dist") not in _DIST_FIELDS:
        raise WorkloadError(f"{where}: expected a number or {{\"dist\": one of {', '.join(_DIST_FIELDS)}, ...}}")
    for key in _DIST_FIELDS[spec["dist"]]:
        if key not in spec:
            raise WorkloadError(f"{where}: {spec['dist']} needs {key!r}")
    if spec["dist"] == "choice" and not (isinstance(spec["values"], list) and spec["values"]):
        raise WorkloadError(f"{where}: choice needs a non-empty list of values")
    if spec["dist"] == "pareto":
        numbers = [spec["scale"], spec["alpha"], spec.get("max", spec["scale"])]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in numbers):
            raise WorkloadError(f"{where}: pareto needs 'scale' > 0 and 'alpha' > 0 (and 'max' > 0 if given)")
        if "max" not in spec and spec["alpha"] <= 1:
            raise WorkloadError(f"{where}: pareto with alpha <= 1 has no mean: give 'max' (a cap) too")


def _check_peer_ref(on: Any, names: set[str], where: str, allow_entry: bool) -> None:
    specials = {"any", "entry"} if allow_entry else {"any"}
    refs = on if isinstance(on, list) else [on]
    for ref in refs:
        if not isinstance(ref, str) or (ref not in names and not (ref in specials and not isinstance(on, list))):
            raise WorkloadError(f"{where}: {ref!r} is not a peer name or one of {sorted(specials)}")


def parse_workload(data: Mapping[str, Any], name: str = "workload") -> Workload:
    """Validate a workload object; raise WorkloadError naming the bad field."""
    if not isinstance(data, dict):
        raise WorkloadError("a workload is a JSON object")
    peers = []
    for i, p in enumerate(data.get("peers") or []):
        where = f"peers[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise WorkloadError(f"{where}: needs a string 'name'")
        if not isinstance(p.get("slots"), int) or p["slots"] < 1:
            raise WorkloadError(f"{where}: 'slots' must be an integer >= 1")
        speed = p.get("speed", 1.0)
        if not isinstance(speed, (int, float)) or speed <= 0:
            raise WorkloadError(f"{where}: 'speed' must be > 0")
        reports = p.get("reports", "pool")
        if reports not in REPORT_MODES:
            raise WorkloadError(f"{where}: 'reports' must be one of {REPORT_MODES}")
        peers.append(PeerSpec(p["name"], p["slots"], float(speed), reports))
    if not peers:
        raise WorkloadError("'peers' must list at least one peer")
    names = {p.name for p in peers}
    if len(names) != len(peers):
        raise WorkloadError("peer names must be unique")
    bw = data.get("bandwidth") or {}
    default_bw = float(bw.get("default", 12.5e6))
    links: dict[tuple[str, str], float] = {}
    for key, rate in (bw.get("links") or {}).items():
        src, sep, dst = key.partition("->")
        if not sep or src not in names or dst not in names or not isinstance(rate, (int, float)) or rate <= 0:
            raise WorkloadError(f"bandwidth.links[{key!r}]: expected \"src->dst\": bytes/s > 0 between known peers")
        links[(src, dst)] = float(rate)
        if bw.get("symmetric", True):
            links.setdefault((dst, src), float(rate))
    streams = data.get("streams") or []
    if not streams:
        raise WorkloadError("'streams' must list at least one job stream")
    for i, s in enumerate(streams):
        where = f"streams[{i}]"
        if not isinstance(s, dict) or s.get("type") not in ("poisson", "burst"):
            raise WorkloadError(f"{where}: 'type' must be \"poisson\" or \"burst\"")
        if s["type"] == "poisson":
            if not isinstance(s.get("duration"), (int, float)) or s["duration"] <= 0:
                raise WorkloadError(f"{where}: a poisson stream needs 'duration' > 0 (seconds)")
            if ("rate" in s) == ("utilisation" in s):
                raise WorkloadError(f"{where}: give exactly one of 'rate' (jobs/s) or 'utilisation' (0..1)")
            if not isinstance(s.get("rate", s.get("utilisation")), (int, float)) or s.get("rate", s.get("utilisation")) <= 0:
                raise WorkloadError(f"{where}: 'rate'/'utilisation' must be > 0")
        elif not isinstance(s.get("count"), int) or s["count"] < 1:
            raise WorkloadError(f"{where}: a burst needs an integer 'count' >= 1")
        _check_peer_ref(s.get("entry", "any"), names, f"{where}.entry", allow_entry=False)
        job = s.get("job")
        if not isinstance(job, dict) or "work" not in job:
            raise WorkloadError(f"{where}.job: needs at least 'work'")
        if "program" in job and not (isinstance(job["program"], str) and job["program"]):
            raise WorkloadError(f"{where}.job.program: a non-empty name")
        _check_dist(job["work"], f"{where}.job.work")
        _check_dist(job.get("procs", 1), f"{where}.job.procs")
        for k, spec in enumerate(job.get("inputs", [])):
            if not isinstance(spec, dict) or "bytes" not in spec:
                raise WorkloadError(f"{where}.job.inputs[{k}]: needs 'bytes'")
            if not isinstance(spec.get("each_proc", False), bool):
                raise WorkloadError(f"{where}.job.inputs[{k}].each_proc: true (one such file per proc) or false")
            _check_dist(spec["bytes"], f"{where}.job.inputs[{k}].bytes")
            _check_peer_ref(spec.get("on", "entry"), names, f"{where}.job.inputs[{k}].on", allow_entry=True)
    return Workload(
        name=str(data.get("name") or name),
        description=str(data.get("description", "")),
        report_interval=float(data.get("report_interval", 15.0)),
        peers=tuple(peers),
        default_bandwidth=default_bw,
        links=links,
        streams=tuple(streams),
        runtime_reports=bool(data.get("runtime_reports", True)),
    )


def load_workload(path: str | Path) -> Workload:
    """Load a workload file; a bare name (``steady-80``) means a shipped one."""
    p = Path(path)
    if not p.exists() and not p.suffix and (WORKLOADS_DIR / f"{p.name}.json").exists():
        p = WORKLOADS_DIR / f"{p.name}.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WorkloadError(f"cannot read workload {str(path)!r}: {exc}") from None
    return parse_workload(data, name=p.stem)
