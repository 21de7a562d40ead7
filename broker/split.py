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

**Late binding** (``waves_ahead``, the peers' ``split_waves_ahead``): the
plan above is made for every input, but a site is *given* only what it can
start soon: its free slots plus at most ``waves_ahead`` waves of its slots
of queue, counting what already waits there (:func:`room`).  The rest of
its planned share stays unassigned (the split's caller keeps those inputs
pending and asks again at its next round, when the sites' reports show
slots freed), so the last inputs of a large job go where slots are free
when they are free, not into a queue chosen at submission (HTCondor's
matchmaking binds jobs to slots as late inside a pool).  Guard: a pool
whose queue holds jobs that are not this grid's (another user's idle
jobs, which may wait for ever) can still be given up to its slots of
queued inputs, less this grid's procs already waiting or in flight there;
otherwise a grid of such pools would never get any.  ``None``: no cap
(every planned input is given, as before late binding); nor is there one when
the inputs go to sites without a fresh report or banned (no usable site is
left): their slots will not be seen to free, so holding inputs back for them
could hold them for ever.

No I/O, no clock of its own: unit-tested as a function, and driven unchanged
by the simulator (benchmarks/placement).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

from .placement import JobRequest, LeastExpectedLoad, PeerState, _reports_pool, _split


@dataclass(frozen=True)
class Share:
    """The inputs a split gives one site."""

    name: str  #: site
    url: str
    count: int  #: inputs given to it
    est_seconds: float  #: estimated time until its last input finishes
    reason: str
    detail: dict[str, Any] | None = None  #: the estimate's parts for its last input


def room(peer: PeerState, estimator: LeastExpectedLoad, waves_ahead: float) -> int:
    """Inputs ``peer`` may be given now under late binding (see the module's docstring).

    Its free slots plus ``waves_ahead`` waves of queue, less the procs already
    running or waiting there (``estimator.ahead``: its report plus the procs
    placed since); at least, for a pool showing idle jobs that are not this
    grid's, its slots less this grid's procs waiting there (``runtimes.idle``)
    and in flight.
    """
    slots = peer.slots or 1
    room = max(0, math.floor((1 + waves_ahead) * slots - estimator.ahead(peer) + 0.5))
    if _reports_pool(peer):
        pool = peer.pool or {}
        waiting = max(0.0, float(pool.get("idle_jobs") or 0) - peer.unmatchable)
        ours = peer.runtimes.idle if peer.runtimes is not None else 0  # unknown: count them all as others'
        if waiting - ours >= 0.5:
            room = max(room, slots - peer.in_flight - ours)
    return room


#: With late binding, a share is counted in flight on its site until a report sampled this long after it
#: was decided, plus twice its estimated move: before that the site is likely still staging it, and its
#: report cannot show it (a late-binding split asks again after every report and would fill it twice).
UNSEEN_GRACE_S = 5.0


def visible_at(decided_at: float, share: Share) -> float:
    """When ``share``'s procs are probably in its site's reports (staged and queued there)."""
    move = float((share.detail or {}).get("move_s") or 0.0)
    return decided_at + 2 * move + UNSEEN_GRACE_S


def still_unseen(unseen: Sequence[tuple[float, int]], sampled_at: float) -> list[tuple[float, int]]:
    """Of the shares sent to a site (``(visible_at, procs)``), those a report sampled at ``sampled_at``
    probably does not show yet: they stay in flight after it."""
    return [(t, n) for t, n in unseen if t > sampled_at]


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
                 exclude: frozenset[str] = frozenset(), waves_ahead: float | None = None) -> list[Share]:
    """Give ``job.n_procs`` inputs to sites, greedily by earliest finish; the shares, largest first.

    ``input_sizes[i]``: bytes of input ``i`` (missing entries: the job's
    ``input_bytes`` spread evenly).  Only the first non-empty tier of
    candidates (see :func:`_tiers`) is used.  Empty when there are no peers
    or no inputs, or when every peer is excluded.  ``waves_ahead``: late
    binding, each site given at most its :func:`room` of its planned share
    (the shares then add up to fewer than ``job.n_procs``: the rest is
    unassigned); ``None``: every input is given.
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
    if waves_ahead is not None and waves_ahead < 0:
        raise ValueError("waves_ahead must be >= 0 (or None: no cap)")
    fresh = {p.name for p in usable}
    if waves_ahead is not None and not all(p.name in fresh for p in candidates):
        waves_ahead = None  # only sites without a fresh report (or banned) are left: no report will free slots
    if waves_ahead is not None:
        rooms = {p.name: room(p, estimator, waves_ahead) for p in candidates}
        if not any(rooms.values()):
            return []  # nothing can be given now: no need to plan
    given = {p.name: 0 for p in candidates}
    #: per site, after each input given to it: its estimated end and the bytes moved there so far
    ends: dict[str, list[float]] = {p.name: [] for p in candidates}
    moved: dict[str, list[int]] = {p.name: [0] for p in candidates}

    def without_move(p: PeerState) -> Any:
        """The site's estimate for its next input, less moving the bytes (the only part an input's size
        changes): one score per input given, not one per input and site."""
        return estimator.score(p, replace(job, n_procs=given[p.name] + 1, input_bytes={}), usable)

    def full_score(p: PeerState, count: int) -> Any:
        return estimator.score(p, replace(job, n_procs=count, input_bytes={holder: moved[p.name][count]}), usable)

    base = {p.name: without_move(p) for p in candidates}
    margin = estimator.tie_margin
    for size in sizes:
        best = None
        for p in candidates:
            move, _ = estimator.move_seconds(p, JobRequest(n_procs=1, input_bytes={holder: moved[p.name][-1] + size}))
            end = base[p.name].score + move
            # A site already given inputs of this job keeps the next one unless another is clearly sooner.
            key = (end - (margin if given[p.name] else 0.0), p.name)
            if best is None or key < best[0]:
                best = (key, p, end)
        assert best is not None
        _, peer, end = best
        given[peer.name] += 1
        moved[peer.name].append(moved[peer.name][-1] + size)
        ends[peer.name].append(end)
        base[peer.name] = without_move(peer)
    # Whole on one site when one can finish it all about as soon as the split would.
    makespan = max(e[-1] for e in ends.values() if e)
    whole = min(((estimator.score(p, replace(job, n_procs=n, input_bytes={holder: sum(sizes)}), usable), p)
                 for p in candidates),
                key=lambda sp: (sp[0].score, sp[1].name))
    planned = dict(given)
    if waves_ahead is not None:  # late binding: what each site can start soon, the rest unassigned
        given = {name: min(count, rooms[name]) for name, count in given.items()}
    last = {p.name: full_score(p, given[p.name]) for p in candidates if given[p.name]}
    if whole[0].score <= makespan + margin:
        w, p = whole
        planned = {p.name: n}
        given = {p.name: n if waves_ahead is None else min(n, rooms[p.name])}
        last = {p.name: w if given[p.name] == n else estimator.score(
            p, replace(job, n_procs=given[p.name], input_bytes={holder: sum(sizes[:given[p.name]])}), usable)}
    shares = []
    for p in candidates:
        count = given.get(p.name, 0)
        if not count:
            continue
        scored = last[p.name]
        d = scored.detail
        reason = (f"{count} input{'s' if count != 1 else ''}, the last done in est {scored.score:.1f} s "
                  f"(wait {d['wait_s']:.1f} + run {d['run_s']:.1f} + move {d['move_s']:.1f})")
        if count < planned.get(p.name, 0):
            reason += f"; {planned[p.name]} planned, the rest wait for its slots to free (late binding)"
        if p.name in avoid:
            reason += "; an avoided site (nothing else could take them)"
        shares.append(Share(p.name, p.url, count, round(scored.score, 3), reason, dict(d)))
    shares.sort(key=lambda s: (-s.count, s.est_seconds, s.name))
    return shares
