"""Self-healing on real processes: kill -9 the broker, a new one is agreed, nothing is lost.

The failover tests run with TLS (mutual TLS for heartbeats, registrations,
membership pushes and elections) and a logged-in user whose token was issued
by the broker that is killed: the other peers still accept it (they know the
dead issuer's certificate from the membership).
"""
from __future__ import annotations

import signal
import threading
import time

import pytest
import requests

from mobile_client import ApiError, Client
from mobile_client import Client as _Client
from tests.conftest import host_session, report_load, wait_until

pytestmark = pytest.mark.integration

HB = ["--heartbeat-interval", "0.3", "--heartbeat-misses", "3", "--no-agent"]
OK = dict(executable_name="ok.sh", submit_text="executable = ok.sh\noutput = out.txt\nqueue\n")
EXE = b"#!/bin/sh\necho ran > out.txt\n"


def view(peer) -> dict:
    return host_session(peer.site_pki, peer.name).get(f"{peer.url}/api/v1/broker", timeout=2).json()


def load(broker, peer, coefficient: float) -> None:
    report_load(broker.url, peer, coefficient, session=host_session(peer.site_pki, peer.name))


def user(peer, site_pki, name: str = "alice") -> str:
    issued = site_pki.users[name]
    return Client(peer.url, ca=site_pki.ca).login(issued.cert_path, issued.key_path)["token"]


def metrics(peer) -> dict[str, float]:
    """The peer's metrics (/metrics from loopback, parsed by prometheus_client): ``name`` or ``name{k=v}``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{peer.url}/metrics", verify=peer.site_pki.ca, timeout=5).text
    return {s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else ""):
            s.value for f in text_string_to_metric_families(text) for s in f.samples}


def agreed(live, broker: str, epoch: int) -> bool:
    views = [view(p) for p in live]
    return all(v["broker"] and v["broker"]["name"] == broker and v["epoch"] == epoch for v in views)


def test_broker_failover_end_to_end(peers, site_pki):
    a = peers("site-a", extra=HB, site_pki=site_pki)
    b = peers("site-b", join=a.url, extra=HB, site_pki=site_pki)
    c = peers("site-c", join=a.url, extra=HB, site_pki=site_pki)
    d = peers("site-d", join=a.url, extra=HB, site_pki=site_pki)
    token = user(a, site_pki)  # issued by the broker that will be killed

    def Client(url, **kw):  # noqa: N802  (the test reads as before, every call logged in over TLS)
        return _Client(url, ca=site_pki.ca, token=token, **kw)

    everyone = [a, b, c, d]
    wait_until(lambda: agreed(everyone, "site-a", 1) and len(view(d)["members"]) == 4, what="membership")
    for p in everyone:
        p.publish.mkdir(parents=True, exist_ok=True)
        (p.publish / "in.txt").write_text("1\n")

    # One job (home site-c) run on the broker-peer itself, one (home site-b) on site-c.
    load(a, a, 0.0)
    on_a = Client(c.url).submit("on-a", EXE, "s.sub", ["in.txt"], **OK)
    assert Client(b.url).wait(on_a["id"], timeout=30)["inputs"][0]["site"] == "site-a"
    load(a, a, 9.0)
    load(a, c, 0.0)
    on_c = Client(b.url).submit("on-c", EXE, "s.sub", ["in.txt"], **OK)
    assert (on_a["peer"], on_c["peer"]) == ("site-c", "site-b")  # their homes
    for job, site in ((on_a, "site-a"), (on_c, "site-c")):
        final = Client(b.url).wait(job["id"], timeout=30)
        assert final["state"] == "completed" and final["inputs"][0]["site"] == site

    # kill -9 the broker; submit during the election through site-d.
    a.stop(signal.SIGKILL)
    during: dict = {}

    def submit_during():
        try:
            during["job"] = Client(d.url).submit("during", EXE, "s.sub", ["in.txt"], **OK)
        except (ApiError, ConnectionError) as exc:
            during["error"] = exc

    t = threading.Thread(target=submit_during)
    t.start()
    live = [b, c, d]
    wait_until(lambda: agreed(live, "site-b", 2), timeout=20, what="site-b to be agreed broker with epoch 2")
    # the election as the metrics tell it: site-b started one and took the role, epoch 2 everywhere
    new = metrics(b)
    assert (new["pocketgrid_broker_epoch"], new["pocketgrid_broker_role_held"]) == (2, 1)
    assert new["pocketgrid_elections_total"] >= 1
    assert new["pocketgrid_broker_role_changes_total{change=taken}"] == 1
    assert (metrics(d)["pocketgrid_broker_epoch"], metrics(d)["pocketgrid_broker_role_held"]) == (2, 0)
    t.join(30)
    assert "job" in during, during.get("error")  # recorded at once at its home; run once a broker splits it
    assert Client(d.url).wait(during["job"]["id"], timeout=30)["state"] == "completed"

    # Jobs submitted before: still there at their homes; outputs on the dead peer say so.
    assert Client(d.url).status(on_c["id"])[0]["state"] == "completed"
    assert Client(d.url).outputs(on_c["id"])["outputs"][0]["files"]
    assert Client(d.url, retries=0).status(on_a["id"])[0]["state"] == "completed"
    gone = Client(d.url, retries=0).outputs(on_a["id"])
    assert gone["unreachable_sites"] == ["site-a"] and gone["outputs"][0]["unreachable"] is True
    assert gone["outputs"][0]["files"] == []

    # A peer restarted after the election (nothing cached) still accepts the token the dead
    # broker issued: the new broker's membership carries every peer's certificate.
    c.stop()
    c.start()
    wait_until(lambda: agreed(live, "site-b", 2), timeout=20, what="site-c to rejoin")
    assert Client(c.url).status(on_c["id"])[0]["state"] == "completed"

    # The old broker comes back: it rejoins as a plain peer, the epoch does not go back.
    a.start()
    wait_until(lambda: agreed([a, b, c, d], "site-b", 2), timeout=20, what="site-a to rejoin under site-b")
    assert Client(a.url).status(on_a["id"])[0]["state"] == "completed"
    assert Client(a.url).outputs(on_a["id"])["outputs"][0]["files"]  # its outputs are back with it

    # Kill the new broker too: a third takes over.  (site-a has seq 1 but is now the newest member? No:
    # it kept its sequence number, so the lowest live peer, site-a, wins the election.)
    b.stop(signal.SIGKILL)
    live = [a, c, d]
    wait_until(lambda: len({view(p)["broker"]["name"] for p in live}) == 1 and view(c)["epoch"] == 3,
               timeout=20, what="a third broker with epoch 3")
    new_broker = view(c)["broker"]["name"]
    assert new_broker in {"site-a", "site-c"}


def test_dead_plain_peer_leaves_the_placement_table(peers, site_pki):
    a = peers("site-a", extra=HB, site_pki=site_pki)
    b = peers("site-b", join=a.url, extra=HB, site_pki=site_pki)
    c = peers("site-c", join=a.url, extra=HB, site_pki=site_pki)
    wait_until(lambda: len(view(a)["members"]) == 3, what="membership")
    load(a, a, 9.0)
    load(a, b, 0.0)  # the best peer ...
    load(a, c, 5.0)
    b.stop(signal.SIGKILL)      # ... dies
    def b_gone():
        rows = {r["peer"]: r for r in view(a)["load"]}
        return rows["site-b"]["alive"] is False
    wait_until(b_gone, timeout=20, what="site-b to be marked dead")
    a.publish.mkdir(parents=True, exist_ok=True)
    (a.publish / "in.txt").write_text("1\n")
    client = _Client(a.url, ca=site_pki.ca, token=user(a, site_pki))
    job = client.submit("after", EXE, "s.sub", ["in.txt"], **OK)
    assert client.wait(job["id"], timeout=30)["inputs"][0]["site"] == "site-c"  # not the dead best one


def test_agents_and_clients_fail_over_by_themselves(peers, site_pki):
    agent = ["--heartbeat-interval", "0.3", "--heartbeat-misses", "3", "--agent-interval", "0.3"]
    a = peers("site-a", extra=agent, site_pki=site_pki)
    b = peers("site-b", join=a.url, extra=agent, site_pki=site_pki)
    c = peers("site-c", join=a.url, extra=agent, site_pki=site_pki)
    token = user(a, site_pki)

    def Client(urls, **kw):  # noqa: N802
        return _Client(urls, ca=site_pki.ca, token=token, **kw)

    wait_until(lambda: len(view(c)["members"]) == 3, what="membership")
    c.publish.mkdir(parents=True, exist_ok=True)
    (c.publish / "in.txt").write_text("1\n")
    job = Client(c.url).submit("j", EXE, "s.sub", ["in.txt"], **OK)
    a.stop(signal.SIGKILL)
    wait_until(lambda: agreed([b, c], "site-b", 2), timeout=20, what="site-b to take over")

    def agents_report_to_new_broker():
        rows = {r["peer"]: r for r in view(b).get("load", [])}
        return {"site-b", "site-c"} <= set(rows) and all(rows[p]["report_age"] < 2 for p in ("site-b", "site-c"))
    wait_until(agents_report_to_new_broker, timeout=20, what="the agents to report to site-b")
    # A client whose first peer is dead uses the next one.
    client = Client([a.url, c.url], retries=0)
    assert [f["path"] for f in client.files()] == ["in.txt"] and client.base_url == c.url
    status, _ = client.status(job["id"])  # its home, site-c, answers (wherever it ran)
    assert status["id"] == job["id"]


def test_a_broker_restarted_within_the_window_keeps_the_role(peers, site_pki):
    """SIGTERM is not a hand-over: the peers wait the documented window (no answer for misses × interval,
    here 6 × 2 s) before they elect, so a broker back within (misses - 1) × interval (10 s) is still
    everyone's broker.  The outage is made at least 4 s long: the old rule (misses failures retried
    interval/misses apart) elected a new broker at most interval + (misses - 1) × interval/misses = 3.7 s
    after a stop."""
    hb = ["--heartbeat-interval", "2", "--heartbeat-misses", "6", "--no-agent"]
    a = peers("site-a", extra=hb, site_pki=site_pki)
    b = peers("site-b", join=a.url, extra=hb, site_pki=site_pki)
    c = peers("site-c", join=a.url, extra=hb, site_pki=site_pki)
    wait_until(lambda: agreed([a, b, c], "site-a", 1) and len(view(c)["members"]) == 3, what="membership")
    a.stop(signal.SIGTERM)
    stopped = time.monotonic()
    wait_until(lambda: time.monotonic() - stopped >= 4.0, what="an outage of 4 s")  # the scenario, not a race
    a.start()  # a restart takes a few seconds here, inside the window

    def heard_from_both() -> bool:  # the restarted broker got a heartbeat from each: they count it alive again
        members = {m["name"]: m for m in host_session(site_pki, "site-a").get(
            f"{a.url}/api/v1/broker", params={"detail": 1}, timeout=5).json()["members"]}
        return all(members.get(n, {}).get("alive") and members[n].get("last_seen_age") is not None
                   and members[n]["last_seen_age"] < 2 for n in ("site-b", "site-c"))

    wait_until(heard_from_both, timeout=30, what="site-b and site-c to heartbeat the restarted broker")
    assert agreed([a, b, c], "site-a", 1)  # no election: same broker, same epoch
    assert "starting an election" not in b.log_tail(50000) + c.log_tail(50000)
