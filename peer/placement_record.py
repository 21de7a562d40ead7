"""A job's placement record at its home: the broker's split decision, one per dispatch round.

Every round of dispatch (peer/job_manager.py) asks the broker to split the
pending inputs over the sites (broker/split.py); the home keeps what it
answered (table ``job_placements``) so the job's owner sees where its inputs
went and why, in its status (``placement``)::

    {"round": 1, "rounds": 1, "inputs": [0, 1, 2], "policy": "least-expected-load",
     "decided_at": 1718000000.0, "chosen": "site-b",
     "shares": [{"site": "site-b", "count": 3, "est_seconds": 61.0,
                 "reason": "3 inputs, the last done in est 61.0 s (wait 0.0 + run 60.0 + move 1.0)"}],
     "ranking": [{"name": "site-b", "score": 61.0, "reason": "est 61.0 s (wait 0 + run 60 + move 1.0); ..."},
                 {"name": "site-a", ...}]}

The status shows the latest round, without each candidate's ``detail`` (the
estimate's parts: wait, run, move, their sources) unless asked
(``?placement=1``, which adds the earlier rounds too, as ``earlier``: the
most recent ``MAX_EARLIER`` of them, ``earlier_omitted`` saying how many
older ones are left out), and ``placed``, the inputs each site was given
over all rounds: a phone's status stays small.  Late binding (broker/split.py)
sends a large job's inputs over many rounds, one whenever sites report free
slots: a round is recorded only when it sent something, so a job has at most
one round per input sent.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

#: A round record larger than this (JSON bytes) keeps no ranking details: a broker does not rank that many peers.
MAX_RECORD_BYTES = 64 * 1024
_RANKED_KEYS = ("name", "score", "reason", "detail")
_SHARE_KEYS = ("count", "est_seconds", "reason", "detail")
#: Earlier rounds ``?placement=1`` shows (the most recent): a 200-input job sent over a hundred rounds
#: stays readable.
MAX_EARLIER = 20


def round_record(decision: dict[str, Any], inputs: Sequence[int]) -> dict[str, Any]:
    """What the home keeps of one split (``decision``: the broker's answer) of the inputs ``inputs``."""
    record = {
        "id": decision.get("id"),
        "inputs": sorted(int(i) for i in inputs),
        "policy": decision.get("policy"),
        "decided_at": decision.get("decided_at"),
        "shares": [{"site": s["name"], **{k: s.get(k) for k in _SHARE_KEYS if s.get(k) is not None}}
                   for s in decision.get("shares") or []],
        "ranking": [{k: c.get(k) for k in _RANKED_KEYS if c.get(k) is not None}
                    for c in decision.get("ranking") or [] if isinstance(c, dict) and c.get("name")],
    }
    if len(json.dumps(record)) > MAX_RECORD_BYTES:
        record["ranking"] = [{k: v for k, v in c.items() if k != "detail"} for c in record["ranking"]]
        record["shares"] = [{k: v for k, v in s.items() if k != "detail"} for s in record["shares"]]
    return record


def _view(record: dict[str, Any], number: int, *, detail: bool) -> dict[str, Any]:
    shares = record.get("shares") or []
    out = {
        "round": number,
        "inputs": record.get("inputs") or [],
        "policy": record.get("policy"),
        "decided_at": record.get("decided_at"),
        "chosen": ",".join(s["site"] for s in shares),
        "shares": shares if detail else [{k: v for k, v in s.items() if k != "detail"} for s in shares],
        "ranking": [c if detail else {k: v for k, v in c.items() if k != "detail"}
                    for c in record.get("ranking") or []],
    }
    return out


def placement_view(rounds: Sequence[dict[str, Any]], *, detail: bool = False) -> dict[str, Any] | None:
    """The job's ``placement``: its latest round (``rounds`` oldest first); ``detail``: the estimate's parts,
    and the earlier rounds as ``earlier``.  None before the first round."""
    if not rounds:
        return None
    view = {**_view(rounds[-1], len(rounds), detail=detail), "rounds": len(rounds), "placed": placed(rounds)}
    if detail and len(rounds) > 1:
        first = max(0, len(rounds) - 1 - MAX_EARLIER)
        view["earlier"] = [_view(r, n, detail=True) for n, r in enumerate(rounds[first:-1], start=first + 1)]
        if first:
            view["earlier_omitted"] = first
    return view


def placed(rounds: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Inputs each site was given over all the rounds, most first (an input sent again counts again)."""
    out: dict[str, int] = {}
    for record in rounds:
        for share in record.get("shares") or []:
            out[share["site"]] = out.get(share["site"], 0) + int(share.get("count") or 0)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))
