"""peer/placement_record.py: a job's dispatch rounds as its status shows them, bounded for a job sent over
many rounds (late binding sends a large job's inputs as sites free slots)."""
from __future__ import annotations

from peer.placement_record import MAX_EARLIER, placement_view, round_record


def one_round(k: int, site: str, count: int) -> dict:
    decision = {"id": k, "policy": "least-expected-load", "decided_at": 1000.0 + k,
                "shares": [{"name": site, "count": count, "est_seconds": 61.0, "reason": f"{count} inputs",
                            "detail": {"wait_s": 0.0}}],
                "ranking": [{"name": site, "score": 61.0, "reason": "est 61.0 s", "detail": {"wait_s": 0.0}}]}
    return round_record(decision, range(k, k + count))


def test_the_status_shows_the_latest_round_and_what_each_site_was_given_over_all_rounds() -> None:
    rounds = [one_round(0, "a", 24), *(one_round(k, "b" if k % 2 else "a", 2) for k in range(1, 60))]
    view = placement_view(rounds)
    assert view["round"] == view["rounds"] == 60 and view["chosen"] == "b"  # round 60 (k = 59) went to b
    assert view["placed"] == {"a": 24 + 29 * 2, "b": 30 * 2}
    assert sum(view["placed"].values()) == 24 + 59 * 2  # every input sent is counted once per round
    assert "earlier" not in view and "detail" not in view["shares"][0]


def test_the_detailed_status_keeps_only_the_most_recent_earlier_rounds() -> None:
    rounds = [one_round(k, "a", 1) for k in range(100)]
    view = placement_view(rounds, detail=True)
    assert len(view["earlier"]) == MAX_EARLIER and view["earlier_omitted"] == 100 - 1 - MAX_EARLIER
    assert [r["round"] for r in view["earlier"]] == list(range(100 - MAX_EARLIER, 100))
    assert view["earlier"][-1]["inputs"] == [98] and view["inputs"] == [99]
    few = placement_view(rounds[:3], detail=True)
    assert [r["round"] for r in few["earlier"]] == [1, 2] and "earlier_omitted" not in few
    assert few["shares"][0]["detail"] == {"wait_s": 0.0}
