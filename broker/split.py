"""Splitting one job's inputs over several sites: a pure function of the load table.

:func:`split_inputs` gives the inputs out one at a time, each to the site
where *that input* would finish soonest, using the default policy's own
estimate (:meth:`broker.placement.LeastExpectedLoad.score`): the procs busy
at the site's last report, the procs placed there since (``in_flight``) and
the inputs this split already gave it, against its slots, in whole waves of
the run time divided by its speed; plus the time to move the bytes given to
it from the peer that holds them.  Calling ``score`` (not a copy of it), with
the job's own request (``dataclasses.replace``: every field it carries, only
the procs and bytes changed) and the same usable peers (whose learned run
times of the job's program count where the site has none of its own), keeps
the split and the ranking in step when the estimate changes (learned run
times, issue 13).

Consequences, by construction:

* the job stays whole on one site when that site alone would finish it
  within the near-tie margin (the ranking's ``tie_fraction``) of the split's
  last input: a site with the free slots for all of it takes it all; and
  while splitting, a site already given inputs keeps the next one unless
  another is sooner by more than that margin, so equal sites do not share a
  job by accident;
* a job larger than any site's free slots spreads: once a site's slots are
  full its next input would wait a whole run, and a site with free slots
  finishes it sooner;
* a site without a fresh report, or banned for failing submissions, gets
  inputs only when no usable site remains; a site the caller asks to
  ``avoid`` (one the inputs were lost on) only when nothing else can take it;
  a site in ``exclude`` (it refused these inputs for good: the
  owner's quota is full there, or it does not run the submit file as
  written) gets none.

No I/O, no clock of its own: unit-tested as a function, and driven unchanged
by the simulator (benchmarks/placement).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from .placement import JobRequest, LeastExpectedLoad, PeerState, _split


@dataclass(frozen=True)
class Share:
    """The inputs a split gives one site."""

    name: str  #: site
    url: str
    count: int  #: inputs given to it
    est_seconds: float  #: estimated time until its last input finishes
    reason: str
    detail: dict[str, Any] | None = None  #: the estimate's parts for its last input


def _holder(job: JobRequest) -> str:
    """The peer the inputs are moved from: the entry peer (the job's home), else the one holder named."""
    if job.entry_peer:
        return job.entry_peer
    holders = [name for name, nbytes in job.input_bytes.items() if nbytes > 0] or list(job.input_bytes)
    return holders[0] if holders else ""


def _tiers(peers: Sequence[PeerState], now: float, stale_factor: float,
           avoid: frozenset[str]) -> list[list[PeerState]]:
    """Candidate groups, best first: usable, stale, banned; then the same three among the avoided."""
    usable, stale, banned = _split(peers, now, stale_factor)
    tiers = []
    for wanted in (False, True):
        for group in (usable, stale, banned):
            tiers.append([p for p in group if (p.name in avoid) == wanted])
    return [t for t in tiers if t]


def split_inputs(peers: Sequence[PeerState], job: JobRequest, now: float, *, estimator: LeastExpectedLoad,
                 avoid: frozenset[str] = frozenset(), input_sizes: Sequence[int] = (),
                 exclude: frozenset[str] = frozenset()) -> list[Share]:
    """Give ``job.n_procs`` inputs to sites, greedily by earliest finish; the shares, largest first.

    ``input_sizes[i]``: bytes of input ``i`` (missing entries: the job's
    ``input_bytes`` spread evenly).  Only the first non-empty tier of
    candidates (see :func:`_tiers`) is used.  Empty when there are no peers
    or no inputs, or when every peer is excluded.
    """
    n = job.n_procs
    peers = [p for p in peers if p.name not in exclude]
    tiers = _tiers(peers, now, estimator.stale_factor, frozenset(avoid))
    if n <= 0 or not tiers:
        return []
    candidates = tiers[0]
    # whose learned run times count for the job's own (its program's history elsewhere): the ranking's
    usable = _split(peers, now, estimator.stale_factor)[0]
    holder = _holder(job)
    default_size = sum(job.input_bytes.values()) // n if job.input_bytes else 0
    sizes = [int(input_sizes[i]) if i < len(input_sizes) else default_size for i in range(n)]
    given = {p.name: 0 for p in candidates}
    moved = {p.name: 0 for p in candidates}
    last: dict[str, Any] = {}
    margin = estimator.tie_margin
    for size in sizes:
        best = None
        for p in candidates:
            request = replace(job, n_procs=given[p.name] + 1, input_bytes={holder: moved[p.name] + size})
            scored = estimator.score(p, request, usable)
            # A site already given inputs of this job keeps the next one unless another is clearly sooner.
            key = (scored.score - (margin if given[p.name] else 0.0), p.name)
            if best is None or key < best[0]:
                best = (key, p, scored)
        assert best is not None
        _, peer, scored = best
        given[peer.name] += 1
        moved[peer.name] += size
        last[peer.name] = scored
    # Whole on one site when one can finish it all about as soon as the split would.
    makespan = max(scored.score for scored in last.values())
    whole = min(((estimator.score(p, replace(job, n_procs=n, input_bytes={holder: sum(sizes)}), usable), p)
                 for p in candidates),
                key=lambda sp: (sp[0].score, sp[1].name))
    if whole[0].score <= makespan + margin:
        scored, p = whole
        given = {p.name: n}
        last = {p.name: scored}
    shares = []
    for p in candidates:
        count = given.get(p.name, 0)
        if not count:
            continue
        scored = last[p.name]
        d = scored.detail
        reason = (f"{count} input{'s' if count != 1 else ''}, the last done in est {scored.score:.1f} s "
                  f"(wait {d['wait_s']:.1f} + run {d['run_s']:.1f} + move {d['move_s']:.1f})")
        if p.name in avoid:
            reason += "; an avoided site (nothing else could take them)"
        shares.append(Share(p.name, p.url, count, round(scored.score, 3), reason, dict(d)))
    shares.sort(key=lambda s: (-s.count, s.est_seconds, s.name))
    return shares
