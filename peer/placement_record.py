"""A job's placement record: the broker's decision, as the entry peer forwards it with the job.

The entry peer asks the broker for a ranking (``POST /api/v1/broker/placements``)
and tries the candidates in order; the one that takes the job stores the
record with it (table ``job_placements``), so its owner sees where the job
went and why in its status (``placement``), on whichever peer owns it::

    {"chosen": "site-b", "policy": "least-expected-load", "decided_at": 1718000000.0,
     "ranking": [{"name": "site-b", "score": 61.0, "reason": "est 61.0 s (wait 0 + run 60 + move 1.0); ...",
                  "detail": {"wait_s": 0.0, "run_s": 60.0, ..., "run_source": "...", "wait_source": "..."}},
                 {"name": "site-a", ...}],
     "failed": [{"name": "site-c", "error": "cannot reach site-c: ConnectionError"}]}

``failed`` lists the candidates that could not take the job before
``chosen`` did.  The status leaves out each candidate's ``detail`` unless
asked (``?placement=1``): a phone's status stays small.
"""
from __future__ import annotations

import json
from typing import Any

#: A forwarded record larger than this (JSON bytes) is not stored: a broker does not rank that many peers.
MAX_RECORD_BYTES = 64 * 1024
_RANKED_KEYS = ("name", "score", "reason", "detail")


def decision_record(decision: dict[str, Any], ranking: list[dict[str, Any]], chosen: str,
                    failed: list[dict[str, str]]) -> dict[str, Any]:
    """The record forwarded with the job to ``chosen`` (the candidate being tried)."""
    return {
        "chosen": chosen,
        "policy": decision.get("policy"),
        "decided_at": decision.get("decided_at"),
        "ranking": [{k: c.get(k) for k in _RANKED_KEYS if c.get(k) is not None} for c in ranking],
        "failed": list(failed),
    }


def checked_record(raw: Any) -> dict[str, Any] | None:
    """A forwarded record, kept to the known shape; None when absent or malformed (an older peer sent none)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("chosen"), str):
        return None
    ranking = raw.get("ranking")
    if not isinstance(ranking, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in ranking):
        return None
    failed = raw.get("failed") or []
    if not isinstance(failed, list) or not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in failed):
        return None
    record = {
        "chosen": raw["chosen"],
        "policy": raw.get("policy") if isinstance(raw.get("policy"), str) else None,
        "decided_at": raw.get("decided_at") if isinstance(raw.get("decided_at"), (int, float)) else None,
        "ranking": [{k: c[k] for k in _RANKED_KEYS if k in c} for c in ranking],
        "failed": [{"name": f["name"], "error": str(f.get("error", ""))[:500]} for f in failed],
    }
    if len(json.dumps(record)) > MAX_RECORD_BYTES:
        return None
    return record


def placement_view(record: dict[str, Any], *, detail: bool = False) -> dict[str, Any]:
    """The record as a job's status shows it: each candidate's ``detail`` only when asked."""
    if detail:
        return record
    return {**record, "ranking": [{k: v for k, v in c.items() if k != "detail"} for c in record.get("ranking", [])]}
