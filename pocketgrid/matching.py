"""Does any slot match a job?  HTCondor's own ClassAd matching, and the first requirement that fails.

``condor_q -better-analyze`` answers "why is my job idle?"; this module gives
the same answer for one job ad against a list of slot (machine) ads, with
HTCondor's ClassAd library (``classad2``):

* how many slots match (``slot.symmetricMatch(job)``: the job's
  ``Requirements`` and the slot's own ``Requirements``/``START``, evaluated
  in a match context as the negotiator does);
* which of the job's requirements no slot satisfies: the job's
  ``Requirements`` split at its top-level ``&&`` (as HTCondor's analysis
  does), each part tried alone as the job's ``Requirements``, the first
  part that no slot satisfies reported with the values it compared.

Slots are judged by what they *could* run: a partitionable slot by its
whole machine (``TotalSlotCpus``/``TotalSlotMemory``/``TotalSlotDisk``/
``TotalSlotGPUs``), not by what its running jobs leave free, so "no slot
matches" means "will never run here", not "busy now"; dynamic slots are
left out (they are carved from a partitionable slot already counted).

Where the ads come from is the caller's business: a Condor site's
collector and schedd (the CondorExecutor's helper process), or, for a site
that runs jobs itself, :func:`host_machine_ad` and :func:`job_ad_from_submit`.
Evaluating a user's expression is evaluating user text: call this in a
child process, never in the server (peer/submit_description.py says why).

``classad2`` is imported inside the functions: the base install has no
HTCondor, and importing this module costs nothing.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

#: Partitionable slot attributes that hold the whole machine's resources.
_TOTALS = {"Cpus": "TotalSlotCpus", "Memory": "TotalSlotMemory", "Disk": "TotalSlotDisk", "GPUs": "TotalSlotGPUs"}
#: Job ad attribute -> the submit command that sets it (for messages a person reads).
SUBMIT_NAMES = {"RequestMemory": "request_memory", "RequestDisk": "request_disk", "RequestCpus": "request_cpus",
                "RequestGPUs": "request_gpus"}
#: Most distinct values of an attribute a message lists.
_MAX_SHOWN = 3


@dataclass(frozen=True)
class Match:
    """The answer for one job: ``slots`` of ``of`` match; ``failing``: why none does (None when some do)."""

    slots: int
    of: int
    failing: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["failing"] is None:
            del d["failing"]
        return d


# ---------------------------------------------------------------------------
# Splitting Requirements at its top-level &&
# ---------------------------------------------------------------------------


def conjuncts(expression: str) -> list[str]:
    """The parts of a ClassAd expression joined by ``&&`` at its top level (outer parentheses removed).

    Only the splitting is done here (strings, parentheses, brackets and
    braces are respected); every part is parsed again by classad2 before it
    is used, and :func:`analyze` falls back to the whole expression when a
    part does not parse.
    """
    text = expression.strip()
    while _wrapped(text):
        text = text[1:-1].strip()
    parts, depth, start, i, quote = [], 0, 0, 0, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith("&&", i):
            parts.append(text[start:i].strip())
            start = i + 2
            i += 2
            continue
        i += 1
    parts.append(text[start:].strip())
    if len(parts) == 1:
        return parts
    out: list[str] = []
    for part in parts:  # a parenthesised conjunction inside: split it too
        inner = conjuncts(part) if _wrapped(part) else [part]
        out.extend(inner)
    return [p for p in out if p]


def _wrapped(text: str) -> bool:
    """True when the whole text is one parenthesised expression: ``(a && b)``, not ``(a) && (b)``."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth, quote, i = 0, None, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0 and i != len(text) - 1:
                return False
        i += 1
    return True


# ---------------------------------------------------------------------------
# Slot ads
# ---------------------------------------------------------------------------


def _flag(ad: Any, key: str) -> bool:
    try:
        value = ad.get(key)
    except Exception:  # noqa: BLE001 - an expression that does not evaluate is "no"
        return False
    return value is True or str(value).strip().lower() == "true"


def slot_kind(ad: Any) -> str:
    """``partitionable``, ``dynamic`` or ``static``, as ema_agent.pool counts slots."""
    slot_type = str(ad.get("SlotType") or "").strip().lower()
    if _flag(ad, "PartitionableSlot") or slot_type == "partitionable":
        return "partitionable"
    if _flag(ad, "DynamicSlot") or slot_type == "dynamic":
        return "dynamic"
    return "static"


def capacity_ads(ads: Iterable[Any]) -> list[Any]:
    """The slots a job could ever run on: static and partitionable slots, the latter with their whole
    machine's resources (dynamic slots are left out: their partitionable parent stands for them)."""
    import classad2

    out = []
    for ad in ads:
        ad = ad if isinstance(ad, classad2.ClassAd) else classad2.ClassAd(dict(ad))
        kind = slot_kind(ad)
        if kind == "dynamic":
            continue
        if kind == "partitionable":
            ad = classad2.ClassAd(str(ad))  # a copy: the caller's ad keeps what is free now
            for attr, total in _TOTALS.items():
                if total in ad:
                    ad[attr] = ad.eval(total)
        out.append(ad)
    return out


def host_machine_ad(*, name: str, cpus: int, memory_mb: int, disk_kb: int, arch: str, opsys: str,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The machine ad of a host that runs jobs itself (a LocalExecutor site), as a startd would
    advertise its one static slot: plain values (JSON), turned into a ClassAd where it is matched."""
    ad: dict[str, Any] = {
        "MyType": "Machine", "Name": name, "Machine": name, "SlotType": "Static",
        "Cpus": int(cpus), "TotalCpus": int(cpus), "Memory": int(memory_mb), "TotalMemory": int(memory_mb),
        "Disk": int(disk_kb), "Arch": arch, "OpSys": opsys, "HasFileTransfer": True,
        "GPUs": 0, "State": "Unclaimed", "Activity": "Idle", "Start": True, "Requirements": True,
    }
    ad.update(extra or {})
    return ad


# ---------------------------------------------------------------------------
# A job ad for a site that runs jobs itself
# ---------------------------------------------------------------------------

_UNITS = {"": None, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_QUANTITY_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)B?\s*$", re.IGNORECASE)


def quantity(value: str, default_unit: int) -> int | None:
    """``request_memory``/``request_disk`` as the condor_submit manual reads them: a number with an
    optional K/M/G/T suffix (bytes), else in the command's default unit (MiB for memory, KiB for
    disk); the result in that default unit, rounded up.  None when it is not a plain quantity (an
    expression: it goes into the ad as one)."""
    m = _QUANTITY_RE.match(value)
    if not m:
        return None
    number, unit = float(m.group(1)), _UNITS[m.group(2).upper()]
    if unit is None:
        return int(math.ceil(number))
    return int(math.ceil(number * unit / default_unit))


def job_ad_from_submit(values: Mapping[str, str]) -> Any:
    """The matching part of the job ad condor_submit would make from expanded submit commands:
    ``RequestCpus``/``RequestMemory``/``RequestDisk``/``RequestGPUs``, the user's ``+Attr``/``MY.Attr``
    attributes, and ``Requirements`` = the user's requirements && the resource requests (condor_submit
    adds those to every job; its platform clauses are left out: the job runs on this host's platform).

    Raises ValueError naming the command when a value is not a ClassAd expression.
    """
    import classad2

    low = {k.lower(): (k, v) for k, v in values.items()}
    ad = classad2.ClassAd()

    def expr(key: str, text: str) -> Any:
        try:
            return classad2.ExprTree(text)
        except Exception as exc:  # noqa: BLE001 - classad2 raises ValueError/ClassAdException
            raise ValueError(f"{key} = {text}: not a ClassAd expression ({exc})") from None

    for key, value in values.items():
        name = key[1:] if key.startswith("+") else key[3:] if key[:3].lower() == "my." else None
        if name and value.strip():
            ad[name] = expr(key, value)
    clauses = []
    for attr, command, unit, default in (("RequestCpus", "request_cpus", 1, "1"),
                                         ("RequestMemory", "request_memory", 1 << 20, None),
                                         ("RequestDisk", "request_disk", 1 << 10, None),
                                         ("RequestGPUs", "request_gpus", 1, None)):
        hit = low.get(command)
        text = hit[1].strip() if hit and hit[1].strip() else default
        if text is None:
            continue
        plain = quantity(text, unit)
        ad[attr] = plain if plain is not None else expr(command, text)
        target = "GPUs" if attr == "RequestGPUs" else attr[len("Request"):]
        clauses.append(f"(TARGET.{target} >= {attr})")
    hit = low.get("requirements")
    user = hit[1].strip() if hit and hit[1].strip() else None
    if user is not None:
        expr("requirements", user)
        clauses.insert(0, f"({user})")
    ad["Requirements"] = expr("requirements", " && ".join(clauses) if clauses else "true")
    return ad


# ---------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------


def _as_ad(ad: Any) -> Any:
    import classad2

    return ad if isinstance(ad, classad2.ClassAd) else classad2.ClassAd(dict(ad))


def _matches(slot: Any, job: Any) -> bool:
    try:
        return bool(slot.symmetricMatch(job))
    except Exception:  # noqa: BLE001 - an expression that cannot be evaluated does not match
        return False


def _job_side(slot: Any, job: Any) -> bool:
    """The job's Requirements alone, in a match context against ``slot``."""
    try:
        return bool(slot.matches(job))
    except Exception:  # noqa: BLE001
        return False


def analyze(job: Any, slots: Iterable[Any]) -> Match:
    """How many of ``slots`` (capacity ads, see :func:`capacity_ads`) match ``job``, and if none, why."""
    import classad2

    job = _as_ad(job)
    slots = [_as_ad(s) for s in slots]
    matched = sum(1 for s in slots if _matches(s, job))
    if matched or not slots:
        return Match(matched, len(slots), None if matched else "there are no slots in the pool")
    requirements = job.lookup("Requirements") if "Requirements" in job else None
    if requirements is None:
        return Match(0, len(slots), "the slots' own requirements (START) refuse this job")
    parts = conjuncts(str(requirements))
    trials = []
    for part in parts:
        try:
            expr = classad2.ExprTree(part)
        except Exception:  # noqa: BLE001 - a part that does not parse alone: judge the whole
            parts, trials = [str(requirements)], []
            break
        trials.append((part, expr))
    if not trials:
        trials = [(str(requirements), requirements)]
    counts = []
    for part, expr in trials:
        alone = classad2.ClassAd(str(job))
        alone["Requirements"] = expr
        counts.append((part, sum(1 for s in slots if _job_side(s, alone))))
    failing = next(((p, n) for p, n in counts if n == 0), None)
    if failing is not None:
        return Match(0, len(slots), describe(failing[0], job, slots))
    if not any(_job_side(s, job) for s in slots):
        return Match(0, len(slots), "each of the job's requirements is met by some slot, but no slot meets all "
                                     "of them: " + " && ".join(p for p, _ in counts))
    return Match(0, len(slots), "the job's requirements are met, but the slots' own requirements (START) "
                                 "refuse it")


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is True or value is False:
        return str(value).lower()
    name = getattr(value, "name", None)  # classad2.Value.Undefined / Error
    return name.lower() if isinstance(name, str) else str(value)


def describe(part: str, job: Any, slots: list[Any]) -> str:
    """One requirement no slot meets, with the values it compares: the job's (``RequestMemory`` =
    99999999, named by its submit command where it has one) and the slots' (``Memory`` up to 7900)."""
    import classad2

    expr = classad2.ExprTree(part)
    said = []
    for ref in job.internalRefs(expr):
        name = ref.split(".", 1)[1] if ref.lower().startswith("my.") else ref
        if name in job:
            value = _shown(job.eval(name))
            command = SUBMIT_NAMES.get(name)
            said.append(f"{command} = {value}" if command else f"{name} = {value}")
    for ref in job.externalRefs(expr):
        name = ref.split(".", 1)[1] if ref.lower().startswith("target.") else ref
        values = []
        for s in slots:
            try:
                values.append(s.eval(name) if name in s else None)
            except Exception:  # noqa: BLE001
                values.append(None)
        present = [v for v in values if v is not None]
        if not present:
            said.append(f"no slot has {name}" if len(slots) > 1 else f"the slot has no {name}")
        elif len(slots) == 1:
            said.append(f"the slot has {name} = {_shown(present[0])}")
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            said.append(f"slots have {name} up to {_shown(max(present))}")
        else:
            distinct = list(dict.fromkeys(_shown(v) for v in present))
            more = "" if len(distinct) <= _MAX_SHOWN else f" and {len(distinct) - _MAX_SHOWN} more"
            said.append(f"slots have {name} = {', '.join(distinct[:_MAX_SHOWN])}{more}")
    return f"{part}" + (f" ({'; '.join(said)})" if said else "")
