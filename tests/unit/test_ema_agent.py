"""End-host Monitoring Agent: coefficient, host sampler, reporter over real loopback HTTP.

The broker is a small ``http.server`` test double of the broker API (not the
real broker, which lives in another package the agent must not import); it
records what it receives so the tests check the wire format the broker side
is written against.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import subprocess
import sys
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import requests

from ema_agent import cli
from ema_agent.coefficient import Weights, host_terms, load_coefficient, paper_coefficient, pool_demand
from ema_agent.metrics import HostMetrics, HostSampler
from ema_agent.reporter import REPORTS_PATH, Reporter, backoff_delay

ROOT = Path(__file__).resolve().parents[2]
WAIT = 5.0  # deadline for any condition in this file; the happy path takes milliseconds


# --------------------------------------------------------------------------- helpers


def metrics(**overrides: Any) -> HostMetrics:
    """A quiet 4-core host at the reference clock; override what a test varies."""
    base = HostMetrics(
        cpu_percent=10.0, clock_mhz=2000.0, cores=4, memory_percent=30.0,
        load1=0.5, load5=0.5, load15=0.5, disk_io_mbps=5.0, processes=150,
        sampled_at=1_700_000_000.0, clock_source="psutil",
    )
    return replace(base, **overrides)


class FixedSampler(HostSampler):
    """Deterministic samples so reporter tests do not depend on this machine's load."""

    def __init__(self, sample: HostMetrics | None = None) -> None:
        super().__init__()
        self.fixed = sample or metrics()

    def sample(self) -> HostMetrics:
        return self.fixed


class FakeBroker:
    """Test double of a peer's broker API on a real loopback socket.

    ``GET /api/v1/broker`` answers ``info`` (default: this server is the
    broker); ``POST /api/v1/broker/reports`` records the report and answers 200,
    or 409 naming ``redirect_to`` when set.
    """

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.port = port
        self.reports: list[dict[str, Any]] = []
        self.discoveries = 0
        self.got_report = threading.Event()
        self.info: dict[str, Any] | None = None
        self.redirect_to: dict[str, str] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def broker_info(self) -> dict[str, Any]:
        if self.info is not None:
            return self.info
        return {"broker": {"name": self.name, "url": self.url}, "epoch": 1,
                "members": [{"name": self.name, "url": self.url}]}

    def start(self) -> "FakeBroker":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/api/v1/broker":
                    fake.discoveries += 1
                    self._send(200, fake.broker_info())
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                if self.path != REPORTS_PATH:
                    self._send(404, {"error": "not found"})
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if fake.redirect_to is not None:
                    self._send(409, {"error": "not the broker", "broker": fake.redirect_to})
                    return
                fake.reports.append(body)
                fake.got_report.set()
                self._send(200, {"accepted": True, "peer": body.get("peer")})

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def brokers():
    started: list[FakeBroker] = []

    def start(name: str, port: int = 0) -> FakeBroker:
        fake = FakeBroker(name, port).start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def session() -> requests.Session:
    """A session that ignores proxy environment variables: loopback must stay loopback."""
    s = requests.Session()
    s.trust_env = False
    return s


def dead_url() -> str:
    """A loopback URL nothing listens on (connection refused at once)."""
    fake = FakeBroker("gone").start()
    url = fake.url
    fake.stop()
    return url


def reporter_for(peer_url: str, *known: str, **kwargs: Any) -> Reporter:
    kwargs.setdefault("sampler", FixedSampler())
    kwargs.setdefault("session", session())
    kwargs.setdefault("timeout", 2.0)
    return Reporter("site-a", peer_url, known, **kwargs)


# --------------------------------------------------------------------------- coefficient


def test_busier_host_scores_higher() -> None:
    idle = metrics(cpu_percent=5, memory_percent=20, load1=0.1, disk_io_mbps=0, processes=100)
    busy = metrics(cpu_percent=95, memory_percent=80, load1=6, disk_io_mbps=400, processes=600)
    assert load_coefficient(idle) < load_coefficient(busy)
    # every single parameter pushes the same way
    for field, more in [("cpu_percent", 90), ("memory_percent", 90), ("load1", 8),
                        ("disk_io_mbps", 800), ("processes", 2000)]:
        assert load_coefficient(metrics(**{field: more})) > load_coefficient(metrics()), field


def test_load_is_normalised_per_core() -> None:
    big = metrics(cores=16, load1=4, processes=300)
    small = metrics(cores=2, load1=4, processes=300)
    assert load_coefficient(big) < load_coefficient(small)
    assert host_terms(big, Weights())["load1"] == pytest.approx(0.25)
    assert host_terms(small, Weights())["load1"] == pytest.approx(2.0)


def test_faster_clock_at_equal_usage_is_less_loaded() -> None:
    fast = metrics(cpu_percent=50, clock_mhz=3000)
    slow = metrics(cpu_percent=50, clock_mhz=1500)
    assert load_coefficient(fast) < load_coefficient(slow)
    assert host_terms(slow, Weights())["cpu"] == pytest.approx(0.5 * 2000 / 1500)


def test_weights_change_the_result() -> None:
    m = metrics(load1=3)
    default = load_coefficient(m, Weights())
    assert load_coefficient(m, Weights(load1=5.0)) > default
    assert load_coefficient(m, Weights(load1=0.0)) < default
    zero = Weights(cpu=0, memory=0, load1=0, disk_io=0, processes=0)
    assert load_coefficient(m, zero) == 0.0


def test_coefficient_is_non_negative_and_zero_when_idle() -> None:
    idle = metrics(cpu_percent=0, memory_percent=0, load1=0, disk_io_mbps=0, processes=0)
    assert load_coefficient(idle) == 0.0
    junk = metrics(cpu_percent=-5, clock_mhz=0, cores=0, memory_percent=-1, load1=-2,
                   disk_io_mbps=float("nan"), processes=-3)
    assert load_coefficient(junk) >= 0.0
    assert load_coefficient(junk, pool={"total_slots": -1, "claimed_slots": -4, "idle_jobs": -2}) >= 0.0


def test_pool_figures_dominate_on_a_head_node() -> None:
    busy_head = metrics(cpu_percent=100, memory_percent=95, load1=8, disk_io_mbps=800, processes=800)
    idle_head = metrics(cpu_percent=0, memory_percent=10, load1=0, disk_io_mbps=0, processes=100)
    empty_pool = {"total_slots": 100, "claimed_slots": 0, "idle_slots": 100, "idle_jobs": 0, "running_jobs": 0}
    half_pool = {"total_slots": 100, "claimed_slots": 50, "idle_slots": 50, "idle_jobs": 0, "running_jobs": 50}
    full_pool = {"total_slots": 100, "claimed_slots": 100, "idle_slots": 0, "idle_jobs": 40, "running_jobs": 100}
    # a quiet pool behind a swamped head node beats a half-full pool behind an idle one
    assert load_coefficient(busy_head, pool=empty_pool) < load_coefficient(idle_head, pool=half_pool)
    assert load_coefficient(idle_head, pool=half_pool) < load_coefficient(idle_head, pool=full_pool)
    assert pool_demand(full_pool) == pytest.approx(1.4)
    w = Weights()
    assert load_coefficient(idle_head, w, full_pool) == pytest.approx(
        w.pool * 1.4 + w.head_node * load_coefficient(idle_head, w))
    # no slots at all: cannot start anything, counts as full plus its queue
    assert pool_demand({"total_slots": 0, "idle_jobs": 3}) == pytest.approx(4.0)
    # absent pool: host only
    assert load_coefficient(idle_head, pool=None) == load_coefficient(idle_head)


def test_paper_coefficient_is_the_literal_formula() -> None:
    m = metrics(cpu_percent=25, clock_mhz=2000, memory_percent=50, disk_io_mbps=10, load1=2, processes=100)
    w = Weights(memory=0.5, disk_io=0.25, load1=1.0, processes=0.1)
    # (1 - 0.25) * 2000 + 0.5*50 + 0.25*10 + 1*2 + 0.1*100
    assert paper_coefficient(m, w) == pytest.approx(1500 + 25 + 2.5 + 2 + 10)


def test_weights_from_dict_and_cli_string() -> None:
    w = Weights.from_dict({"cpu": "2", "memory": 0.25})
    assert (w.cpu, w.memory, w.load1) == (2.0, 0.25, Weights().load1)
    assert Weights.from_dict(None) == Weights()
    with pytest.raises(ValueError, match="unknown weight"):
        Weights.from_dict({"cpuu": 1})
    with pytest.raises(ValueError, match=">= 0"):
        Weights.from_dict({"cpu": -1})
    with pytest.raises(ValueError, match="> 0"):
        Weights.from_dict({"reference_clock_mhz": 0})
    with pytest.raises(ValueError, match="number"):
        Weights.from_dict({"cpu": "fast"})
    assert cli.parse_weights("cpu=3, load1=0.5") == Weights(cpu=3.0, load1=0.5)
    with pytest.raises(ValueError, match="key=value"):
        cli.parse_weights("cpu")


# --------------------------------------------------------------------------- sampler


def test_sampler_on_this_machine_is_sane() -> None:
    sampler = HostSampler()
    first = sampler.sample()
    second = sampler.sample()
    for m in (first, second):
        assert 0.0 <= m.cpu_percent <= 100.0
        assert m.cores >= 1
        assert m.clock_mhz > 0
        assert m.clock_source in {"psutil", "cpuinfo", "nominal"}
        assert 0.0 <= m.memory_percent <= 100.0
        assert min(m.load1, m.load5, m.load15) >= 0.0
        assert m.disk_io_mbps >= 0.0
        assert m.processes >= 1
    assert first.disk_io_mbps == 0.0  # no previous counters yet
    d = second.to_dict()
    assert set(d) >= {"cpu_percent", "clock_mhz", "cores", "memory_percent", "load1", "load5", "load15",
                      "disk_io_mbps", "processes", "sampled_at"}
    json.dumps(d)  # JSON-ready


def test_clock_falls_back_to_cpuinfo_then_nominal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(psutil, "cpu_freq", lambda *a, **k: None)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 1200.0\nprocessor\t: 1\ncpu MHz\t\t: 1800.0\n")
    clock, source = HostSampler(cpuinfo_path=cpuinfo).clock_rate()
    assert (clock, source) == (pytest.approx(1500.0), "cpuinfo")

    sampler = HostSampler(cpuinfo_path=tmp_path / "missing", nominal_clock_mhz=1234.0)
    m = sampler.sample()
    assert (m.clock_mhz, m.clock_source, sampler.clock_source) == (1234.0, "nominal", "nominal")

    # psutil reporting 0 MHz is treated like no answer
    monkeypatch.setattr(psutil, "cpu_freq", lambda *a, **k: SimpleNamespace(current=0.0, min=0.0, max=0.0))
    assert HostSampler(cpuinfo_path=cpuinfo).clock_rate()[1] == "cpuinfo"


def test_clock_fallback_on_the_real_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "cpu_freq", lambda *a, **k: None)
    m = HostSampler().sample()
    assert m.clock_mhz > 0
    assert m.clock_source in {"cpuinfo", "nominal"}


def test_sampler_degrades_to_zero_when_counters_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise OSError("not in this container")

    monkeypatch.setattr(psutil, "disk_io_counters", lambda *a, **k: None)
    monkeypatch.setattr(psutil, "getloadavg", missing)
    monkeypatch.setattr("os.getloadavg", missing)
    monkeypatch.setattr(psutil, "virtual_memory", missing)
    monkeypatch.setattr(psutil, "pids", missing)
    monkeypatch.setattr(psutil, "cpu_percent", lambda *a, **k: (_ for _ in ()).throw(NotImplementedError()))
    monkeypatch.delattr(psutil, "cpu_freq")
    sampler = HostSampler(cpuinfo_path="/nonexistent/cpuinfo", nominal_clock_mhz=1000.0)
    for _ in range(2):
        m = sampler.sample()
        assert (m.cpu_percent, m.memory_percent, m.load1, m.load5, m.load15, m.disk_io_mbps, m.processes) == (
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
        assert m.clock_mhz == 1000.0 and m.cores >= 1
    assert load_coefficient(m) >= 0.0


# --------------------------------------------------------------------------- reporter


def test_report_schema_over_real_http(brokers) -> None:
    broker = brokers("site-a")
    sample = metrics(cpu_percent=40)
    reporter = reporter_for(broker.url, sampler=FixedSampler(sample), interval=7.5)
    assert reporter.report_once() is True
    assert broker.got_report.wait(WAIT)
    (report,) = broker.reports
    assert set(report) == {"peer", "url", "coefficient", "paper_coefficient", "metrics", "pool", "site",
                           "sampled_at", "interval"}
    assert report["peer"] == "site-a" and report["url"] == broker.url
    assert report["coefficient"] == pytest.approx(load_coefficient(sample))
    assert report["paper_coefficient"] == pytest.approx(paper_coefficient(sample))
    assert report["metrics"] == sample.to_dict()
    assert report["pool"] is None and report["site"] is None
    assert report["sampled_at"] == sample.sampled_at
    assert report["interval"] == 7.5
    assert reporter.broker_url == broker.url and reporter.failures == 0


def test_report_carries_pool_figures_and_survives_a_failing_pool_source(brokers) -> None:
    broker = brokers("head")
    pool = {"total_slots": 10, "claimed_slots": 5, "idle_slots": 5, "idle_jobs": 0, "running_jobs": 5}
    reporter = reporter_for(broker.url, pool_source=lambda: pool)
    assert reporter.report_once()
    assert broker.reports[-1]["pool"] == pool
    assert broker.reports[-1]["coefficient"] == pytest.approx(load_coefficient(metrics(), Weights(), pool))

    def broken() -> dict[str, int]:
        raise ConnectionError("collector down")

    reporter.pool_source = broken
    assert reporter.report_once()
    assert broker.reports[-1]["pool"] is None


def test_409_retargets_to_the_named_broker_at_once(brokers) -> None:
    old = brokers("site-a")
    new = brokers("site-b")
    old.redirect_to = {"name": "site-b", "url": new.url}
    reporter = reporter_for(old.url)
    assert reporter.report_once() is True  # the same attempt re-sent the report to site-b
    assert new.got_report.wait(WAIT)
    assert old.reports == [] and len(new.reports) == 1
    assert (reporter.broker_name, reporter.broker_url) == ("site-b", new.url)
    assert new.url in reporter.known_peers
    discoveries = old.discoveries
    assert reporter.report_once()  # next report goes straight to the new broker
    assert len(new.reports) == 2 and old.discoveries == discoveries


def test_409_loop_between_peers_fails_without_raising(brokers) -> None:
    a = brokers("site-a")
    b = brokers("site-b")
    a.redirect_to = {"name": "site-b", "url": b.url}
    b.redirect_to = {"name": "site-a", "url": a.url}
    reporter = reporter_for(a.url)
    assert reporter.report_once() is False
    assert reporter.broker_url is None  # re-discover next time


def test_broker_down_then_back(brokers, caplog: pytest.LogCaptureFixture) -> None:
    broker = brokers("site-a")
    port = broker.port
    reporter = reporter_for(broker.url)
    assert reporter.report_once()
    broker.stop()

    with caplog.at_level(logging.DEBUG, logger="ema_agent"):
        for attempt in range(1, 4):
            assert reporter.report_once() is False  # must not raise
            assert reporter.failures == attempt
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per outage
    assert reporter.broker_url is None

    revived = brokers("site-a", port=port)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ema_agent"):
        assert reporter.report_once() is True
    assert revived.got_report.wait(WAIT)
    assert reporter.failures == 0 and reporter.retry_delay() == 0.0
    assert any("again after 3 failed attempt" in r.getMessage() for r in caplog.records)


def test_failover_discovery_through_another_known_peer(brokers) -> None:
    other = brokers("site-b")
    broker = brokers("site-c")
    other.info = {"broker": {"name": "site-c", "url": broker.url}, "epoch": 4,
                  "members": [{"name": "site-b", "url": other.url}, {"name": "site-c", "url": broker.url},
                              {"name": "bad", "url": "ftp://nope"}, {"name": "junk"}]}
    down = dead_url()
    reporter = reporter_for(down, other.url)
    assert reporter.report_once() is True
    assert broker.got_report.wait(WAIT)
    assert broker.reports[0]["url"] == down  # reports the monitored peer, not the one that answered
    assert reporter.epoch == 4
    assert reporter.known_peers == [down, other.url, broker.url]


def test_no_broker_elected_yet(brokers) -> None:
    peer = brokers("site-a")
    peer.info = {"broker": None, "epoch": 0, "members": []}
    reporter = reporter_for(peer.url)
    assert reporter.report_once() is False
    assert peer.reports == []


def test_learned_peers_are_bounded_and_deduplicated(brokers) -> None:
    peer = brokers("site-a")
    many = [{"name": f"p{i}", "url": f"http://10.0.0.{i}:8080/"} for i in range(50)]
    peer.info = {"broker": {"name": "site-a", "url": peer.url}, "epoch": 1,
                 "members": [*many, *many, {"name": "site-a", "url": peer.url + "/"}]}
    reporter = reporter_for(peer.url, max_known_peers=8)
    for _ in range(3):
        assert reporter.report_once()
        reporter.broker_url = None  # force a new discovery each time
    known = reporter.known_peers
    assert len(known) == len(set(known)) <= 1 + 8
    assert known[0] == peer.url


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(7)
    for failures in range(1, 12):
        ceiling = min(15.0, 1.0 * 2 ** (failures - 1))
        for _ in range(20):
            delay = backoff_delay(failures, base=1.0, cap=15.0, rng=rng)
            assert ceiling / 2 <= delay <= ceiling
    assert backoff_delay(0) == 0.0
    assert backoff_delay(10_000, cap=15.0) <= 15.0  # no overflow on a long outage
    lows = [backoff_delay(n, 1.0, 60.0, random.Random(0)) for n in range(1, 7)]
    assert lows == sorted(lows)  # with the same draw, strictly growing until the cap


def test_reporter_backoff_follows_failures_and_caps_at_interval() -> None:
    reporter = reporter_for(dead_url(), interval=4.0, rng=random.Random(1))
    delays = []
    for _ in range(6):
        assert reporter.report_once() is False
        delays.append(reporter.retry_delay())
    ceilings = [min(4.0, 2 ** n) for n in range(6)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings))
    assert max(delays) <= 4.0


def test_thread_reports_and_stops_promptly(brokers) -> None:
    broker = brokers("site-a")
    reporter = reporter_for(broker.url, interval=60.0)
    thread = reporter.start_thread()
    assert broker.got_report.wait(WAIT)
    reporter.stop(timeout=WAIT)  # wakes the 60 s wait at once
    assert not thread.is_alive()
    assert reporter.reports_accepted >= 1


def test_ema_agent_imports_no_server_code() -> None:
    code = (
        "import sys, ema_agent, ema_agent.metrics, ema_agent.coefficient, ema_agent.reporter, ema_agent.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'flask', 'sqlalchemy', 'werkzeug', 'peer', 'broker'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------- cli


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pocketgrid agent")
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_once_against_a_broker(brokers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    broker = brokers("site-a")
    args = _args("--peer", broker.url, "--name", "site-a", "--once", "--weights", "cpu=2", "--interval", "5")
    assert (args.interval, args.weights) == (5.0, "cpu=2")
    assert cli.run(args) == 0
    assert broker.reports and broker.reports[0]["peer"] == "site-a" and broker.reports[0]["interval"] == 5.0


def test_cli_once_fails_cleanly_and_rejects_bad_config() -> None:
    assert cli.run(_args("--peer", dead_url(), "--name", "x", "--once", "--timeout", "1")) == 1
    assert cli.run(_args("--peer", "http://127.0.0.1:1", "--name", "x", "--weights", "nope=1")) == 2
    assert cli.run(_args("--peer", "not a url", "--name", "x")) == 2
    with pytest.raises(SystemExit):
        _args("--name", "x")  # --peer is required


def test_the_log_says_which_figures_the_reports_carry(brokers, caplog: pytest.LogCaptureFixture) -> None:
    """Once when the agent starts sending them and once at each change, not at every report."""
    broker = brokers("head")
    figures = {"total_slots": 4, "claimed_slots": 0, "idle_slots": 4, "idle_jobs": 0, "collector": "cm.example.org"}

    class Source:
        last_reason: str | None = None
        answer: dict | None = figures

        def __call__(self):
            self.last_reason = None if self.answer else "the collector cm.example.org did not answer: refused"
            return self.answer

    source = Source()
    reporter = reporter_for(broker.url, pool_source=source)
    with caplog.at_level(logging.INFO, logger="ema_agent.reporter"):
        for answer in (figures, figures, None, None, figures):
            source.answer = answer
            assert reporter.report_once()
    said = [r.getMessage() for r in caplog.records if "figures" in r.getMessage()]
    assert len(said) == 3, said
    assert "pool figures from collector cm.example.org: 4 slots (0 claimed, 4 idle)" in said[0]
    assert "host figures only" in said[1] and "cm.example.org did not answer" in said[1]
    assert "pool figures" in said[2]
    assert [r["pool"] is not None for r in broker.reports] == [True, True, False, False, True]


def test_cli_builds_a_pool_source_unless_told_not_to() -> None:
    from ema_agent.pool import PoolSource

    base = ("--peer", "http://127.0.0.1:1", "--name", "x")
    source = cli._pool_source(_args(*base))
    assert isinstance(source, PoolSource) and source.collector is None  # HTCondor's configuration decides
    assert cli._pool_source(_args(*base, "--collector", "cm.example.org:9618")).collector == "cm.example.org:9618"
    assert cli._pool_source(_args(*base, "--no-pool")) is None
    assert cli.run(_args(*base, "--no-pool", "--collector", "cm")) == 2  # contradictory: a configuration error


def test_report_carries_the_sites_held_and_unmatchable_procs_and_goes_out_at_once_when_they_change(brokers) -> None:
    broker = brokers("site-a")
    site = {"held": 4, "unmatchable": 1, "idle": 1}
    reporter = reporter_for(broker.url, interval=300.0, site_source=lambda: site)
    reporter.start_thread()
    try:
        assert broker.got_report.wait(WAIT)
        assert broker.reports[-1]["site"] == site
        broker.got_report.clear()
        site = {"held": 0, "unmatchable": 0, "idle": 0}
        reporter.report_soon()  # the executor saw the counts change: no waiting 300 s
        assert broker.got_report.wait(WAIT)
        assert broker.reports[-1]["site"] == {"held": 0, "unmatchable": 0, "idle": 0}
    finally:
        reporter.stop(timeout=WAIT)

    def broken():
        raise ConnectionError("peer down")

    reporter.site_source = broken
    assert reporter.report_once() and broker.reports[-1]["site"] is None  # the report still goes out
