"""Periodic load reports from one host to the current broker, over HTTP only.

The paper's EMA sent its coefficient every 15 s to "the resource broker" as an
XML-RPC call. Here the broker is a role that moves between peers (election),
so the agent must find it, follow it when it moves and survive while nobody
holds it:

* **discovery**: ``GET {peer}/api/v1/broker`` on the monitored peer first,
  then on other known peers (configured ones, plus members learned from
  earlier answers, bounded and de-duplicated) so the agent still finds the
  broker when its own peer is down;
* **retargeting**: a ``409`` answer names the real broker; the same report is
  re-sent there at once;
* **failures** never escape: the next attempt comes after an exponential
  backoff with jitter (base 1 s, capped at the interval, so a recovered broker
  hears from us within one interval) and starts with re-discovery; the
  warning is logged once per outage, not once per attempt;
* **no backlog**: each attempt takes a fresh sample; an old load figure is
  worthless (soft state), so nothing is queued.

Report schema (the broker side is written against it)::

    POST {broker_url}/api/v1/broker/reports
    {"peer": str, "url": str, "coefficient": float, "paper_coefficient": float,
     "metrics": HostMetrics.to_dict(), "pool": null | {...},
     "site": null | {"held": int, "unmatchable": int, "idle": int},
     "sampled_at": float, "interval": float,
     "runtimes": {...}}          # optional: the site's learned run times
                                 # (a peer's in-process agent; schema in broker/runtimes.py)

``site``: this site's own procs that are not about to use a slot (held, or
matched by no slot), from the peer's executor (``site_source``: the peer
itself for the in-process agent, its ``/healthz`` for a standalone one); the
broker's placement does not count them as load.  :meth:`Reporter.report_soon`
sends the next report at once (the peer calls it when those counts change).
    -> 200 {"accepted": true, ...}
    -> 409 {"error": str, "broker": {"name": str, "url": str}}
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

import requests

from .coefficient import Weights, load_coefficient, paper_coefficient
from .metrics import HostMetrics, HostSampler

log = logging.getLogger(__name__)

BROKER_INFO_PATH = "/api/v1/broker"
REPORTS_PATH = "/api/v1/broker/reports"

DEFAULT_INTERVAL = 15.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_BACKOFF_BASE = 1.0
DEFAULT_MAX_KNOWN_PEERS = 32

#: 409 redirects followed within one attempt; more means the peers disagree
#: about who the broker is (an election in progress): back off and re-discover.
MAX_REDIRECTS = 3

PoolSource = Callable[[], "Mapping[str, Any] | None"]
#: Returns the report's optional ``runtimes`` field (or None): run times learned from the site's jobs.
RunTimesSource = Callable[[], "Mapping[str, Any] | None"]


def backoff_delay(
    failures: int,
    base: float = DEFAULT_BACKOFF_BASE,
    cap: float = DEFAULT_INTERVAL,
    rng: random.Random | None = None,
) -> float:
    """Delay before the next attempt after ``failures`` consecutive failures.

    Exponential with "equal jitter": uniform in ``[c/2, c]`` with
    ``c = min(cap, base * 2**(failures-1))``. The jitter spreads the agents of
    many sites so a restarted broker is not hit by all of them in the same
    instant; keeping the lower half fixed (unlike "full jitter") never retries
    immediately. 0 when there was no failure.
    """
    if failures <= 0:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 60))
    return ceiling / 2.0 + (rng or random).uniform(0.0, ceiling / 2.0)


def _normalise_url(url: Any) -> str | None:
    """``http(s)://host[:port][/prefix]`` without a trailing slash, or None if unusable.

    URLs learned from other peers' answers are validated so a malformed
    membership entry cannot make the agent request something odd.
    """
    if not isinstance(url, str):
        return None
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return url


def _dedup(urls: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for url in urls:
        if url not in seen:
            seen.add(url)
            out.append(url)
    return out


class Reporter:
    """Samples the host and reports its load coefficient to the broker every ``interval`` s.

    Runs standalone (:meth:`run_forever`) or as a daemon thread inside a peer
    (:meth:`start_thread` / :meth:`stop`). One report attempt is
    :meth:`report_once`, which tests drive directly.

    ``session`` lets the caller inject TLS verification, client certificates
    or auth headers; ``pool_source`` is a callable returning Condor pool
    figures (or None) on a head node; ``runtimes_source`` one returning the
    site's learned run times (or None), which only a peer can compute from
    its jobs' event logs.
    """

    def __init__(
        self,
        peer_name: str,
        peer_url: str,
        known_peers: Iterable[str] = (),
        *,
        interval: float = DEFAULT_INTERVAL,
        weights: Weights | None = None,
        sampler: HostSampler | None = None,
        session: requests.Session | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        pool_source: PoolSource | None = None,
        site_source: PoolSource | None = None,
        runtimes_source: RunTimesSource | None = None,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        max_known_peers: int = DEFAULT_MAX_KNOWN_PEERS,
        rng: random.Random | None = None,
    ) -> None:
        if not peer_name:
            raise ValueError("peer_name is required")
        own_url = _normalise_url(peer_url)
        if own_url is None:
            raise ValueError(f"peer_url must be an http(s) URL, got {peer_url!r}")
        if interval <= 0:
            raise ValueError("interval must be > 0")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if backoff_base <= 0:
            raise ValueError("backoff_base must be > 0")
        self.peer_name = peer_name
        self.peer_url = own_url
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.weights = weights or Weights()
        self.sampler = sampler or HostSampler()
        self.pool_source = pool_source
        self.site_source = site_source
        self.runtimes_source = runtimes_source
        self.backoff_base = float(backoff_base)
        self.max_known_peers = max(1, int(max_known_peers))
        self._rng = rng or random.Random()
        self._owns_session = session is None
        self.session = session or requests.Session()
        if self._owns_session:
            self.session.headers["User-Agent"] = "pocketgrid-ema/0.1"

        configured = [u for u in (_normalise_url(k) for k in known_peers) if u]
        # The monitored peer first: it is the most likely to know the broker.
        self._pinned: list[str] = _dedup([own_url, *configured])
        self._learned: list[str] = []

        self.broker_url: str | None = None
        self.broker_name: str | None = None
        self.epoch: int | None = None
        self._announced_broker: str | None = None

        self.failures = 0
        """Consecutive failed attempts (0 while reports get through)."""
        self.reports_accepted = 0
        self.last_report: dict[str, Any] | None = None
        """The latest report built (only the latest: nothing is queued)."""
        self._outage_since: float | None = None
        self._figures_kind: str | None = None  # "pool" or "host": what the last report carried (logged on change)

        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- peers and broker -----------------------------------------------------

    @property
    def known_peers(self) -> list[str]:
        """Peers to ask for the broker, in order: configured, then learned."""
        return [*self._pinned, *self._learned]

    def _learn(self, urls: Iterable[Any]) -> None:
        """Remember peer URLs for fail-over: newest first, de-duplicated, bounded."""
        fresh = [u for u in (_normalise_url(x) for x in urls) if u and u not in self._pinned]
        self._learned = _dedup([*fresh, *self._learned])[: self.max_known_peers]

    def _set_broker(self, broker: Any) -> bool:
        """Adopt ``{"name", "url"}`` as the broker if its URL is usable."""
        if not isinstance(broker, Mapping):
            return False
        url = _normalise_url(broker.get("url"))
        if url is None:
            return False
        if url != self._announced_broker:  # log changes, not every re-discovery of the same broker
            log.info("broker for %s is now %s (%s)", self.peer_name, broker.get("name"), url)
            self._announced_broker = url
        self.broker_url = url
        self.broker_name = broker.get("name") if isinstance(broker.get("name"), str) else None
        self._learn([url])
        return True

    def _forget_broker(self) -> None:
        self.broker_url = None
        self.broker_name = None

    def discover(self) -> str | None:
        """Ask known peers, in order, who the broker is; return its URL or None.

        Members listed in any answer are remembered as further peers to ask
        next time. A peer answering ``"broker": null`` (no broker yet, or an
        election in progress) does not stop the search.
        """
        for peer in self.known_peers:
            try:
                response = self.session.get(peer + BROKER_INFO_PATH, timeout=self.timeout)
            except requests.RequestException as exc:
                log.debug("broker discovery via %s failed: %s", peer, exc)
                continue
            if response.status_code != 200:
                log.debug("broker discovery via %s: HTTP %s", peer, response.status_code)
                continue
            try:
                body = response.json()
            except ValueError:
                log.debug("broker discovery via %s: response is not JSON", peer)
                continue
            if not isinstance(body, dict):
                continue
            members = body.get("members")
            if isinstance(members, list):
                self._learn(m.get("url") for m in members if isinstance(m, Mapping))
            if self._set_broker(body.get("broker")):
                epoch = body.get("epoch")
                self.epoch = epoch if isinstance(epoch, int) else self.epoch
                return self.broker_url
        return None

    # -- one report -----------------------------------------------------------

    def build_report(self, metrics: HostMetrics, pool: Mapping[str, Any] | None = None,
                     runtimes: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The JSON body of one report (schema in the module docstring)."""
        report = {
            "peer": self.peer_name,
            "url": self.peer_url,
            "coefficient": load_coefficient(metrics, self.weights, pool),
            "paper_coefficient": paper_coefficient(metrics, self.weights),
            "metrics": metrics.to_dict(),
            "pool": dict(pool) if pool is not None else None,
            "site": self._site(),
            "sampled_at": metrics.sampled_at,
            "interval": self.interval,
        }
        if runtimes is not None:
            report["runtimes"] = dict(runtimes)
        return report

    def _pool(self) -> Mapping[str, Any] | None:
        """Pool figures from the plug-in source, None if absent or failing.

        The source talks to a collector that may be down; that must cost the
        report its pool figures, not the report itself.
        """
        if self.pool_source is None:
            self._say_figures(None, "no pool figures asked for (no Condor executor here, or --no-pool)")
            return None
        try:
            pool = self.pool_source()
        except Exception as exc:  # a plug-in: whatever it raises, the host report still goes out
            self._say_figures(None, f"the pool source failed: {type(exc).__name__}: {exc}")
            return None
        if not isinstance(pool, Mapping):
            self._say_figures(None, getattr(self.pool_source, "last_reason", None) or "no pool answered")
            return None
        self._say_figures(pool, None)
        return pool

    def _site(self) -> dict[str, int] | None:
        """This site's held and unmatchable procs (None: unknown); a failing source costs only this field."""
        if self.site_source is None:
            return None
        try:
            site = self.site_source()
        except Exception as exc:  # a plug-in: whatever it raises, the report still goes out
            log.debug("site counts unavailable: %s", exc)
            return None
        if not isinstance(site, Mapping):
            return None
        return {k: int(v) for k, v in site.items() if k in ("held", "unmatchable", "idle") and isinstance(v, int)}

    def report_soon(self) -> None:
        """Send the next report now rather than at the end of the interval (thread-safe)."""
        self._wake.set()

    def _say_figures(self, pool: Mapping[str, Any] | None, reason: str | None) -> None:
        """Log which figures the reports carry, at start and whenever that changes (not every report)."""
        kind = "pool" if pool is not None else "host"
        if kind == self._figures_kind:
            return
        self._figures_kind = kind
        if pool is not None:
            log.info(
                "%s: reporting pool figures from collector %s: %s slots (%s claimed, %s idle), %s idle jobs",
                self.peer_name, pool.get("collector", "?"), pool.get("total_slots", "?"), pool.get("claimed_slots", "?"),
                pool.get("idle_slots", "?"), pool.get("idle_jobs", "?"),
            )
        else:
            log.info("%s: reporting host figures only (this host's CPU, memory and load): %s", self.peer_name, reason)

    def _runtimes(self) -> Mapping[str, Any] | None:
        """Run-time figures from the plug-in source, None if absent or failing (the report goes out anyway)."""
        if self.runtimes_source is None:
            return None
        try:
            runtimes = self.runtimes_source()
        except Exception as exc:  # a plug-in: whatever it raises, the host report still goes out
            log.debug("run-time figures unavailable: %s", exc)
            return None
        return runtimes if isinstance(runtimes, Mapping) else None

    def report_once(self) -> bool:
        """Sample, compute and deliver one report. True if the broker accepted it.

        Never raises for network or broker trouble; failures only change the
        backoff (:meth:`retry_delay`) and trigger re-discovery next time.
        """
        report = self.build_report(self.sampler.sample(), self._pool(), self._runtimes())
        self.last_report = report
        reason = self._deliver(report)
        self._record(reason)
        return reason is None

    def _deliver(self, report: dict[str, Any]) -> str | None:
        """POST ``report`` to the broker, following 409s and re-discovering once.

        Returns None on success, else a short reason for the log.
        """
        discovered = False
        tried: set[str] = set()
        reason = "no known peer names a broker"
        for _ in range(MAX_REDIRECTS + 2):
            if self.broker_url is None:
                if discovered or self.discover() is None:
                    return reason
                discovered = True
            url = self.broker_url
            if url is None or url in tried:
                self._forget_broker()
                return reason
            tried.add(url)
            try:
                response = self.session.post(url + REPORTS_PATH, json=report, timeout=self.timeout)
            except requests.RequestException as exc:
                reason = f"{url}: {type(exc).__name__}: {exc}"
                self._forget_broker()
                continue
            body = _json_or_none(response)
            if response.status_code == 409:
                reason = f"{url} is not the broker"
                if not self._set_broker(body.get("broker") if isinstance(body, dict) else None):
                    self._forget_broker()
                continue
            if 200 <= response.status_code < 300:
                if isinstance(body, dict) and body.get("accepted") is False:
                    return f"{url} refused the report: {body.get('error', body)}"
                return None
            reason = f"{url}: HTTP {response.status_code}"
            self._forget_broker()
        return reason

    def _record(self, reason: str | None) -> None:
        """Update the failure count; log once when an outage starts and once when it ends."""
        if reason is None:
            if self.failures:
                elapsed = time.monotonic() - (self._outage_since or time.monotonic())
                log.info(
                    "%s: reporting to broker %s again after %d failed attempt(s) over %.0f s",
                    self.peer_name, self.broker_url, self.failures, elapsed,
                )
            else:
                log.debug("%s: report accepted by %s", self.peer_name, self.broker_url)
            self.failures = 0
            self._outage_since = None
            self.reports_accepted += 1
            return
        self.failures += 1
        if self.failures == 1:
            self._outage_since = time.monotonic()
            log.warning(
                "%s: cannot report load (%s); retrying with backoff, quiet until it recovers",
                self.peer_name, reason,
            )
        else:
            log.debug("%s: report attempt %d failed: %s", self.peer_name, self.failures, reason)

    def retry_delay(self) -> float:
        """Backoff before the next attempt given the current failure count (0 if none)."""
        return backoff_delay(self.failures, self.backoff_base, self.interval, self._rng)

    # -- running --------------------------------------------------------------

    def run_forever(self) -> None:
        """Report every ``interval`` s (backing off on failure) until :meth:`stop`."""
        log.info(
            "EMA for %s (%s) reporting every %.1f s; known peers: %s",
            self.peer_name, self.peer_url, self.interval, ", ".join(self.known_peers),
        )
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ok = self.report_once()
            except Exception:  # the agent must outlive any bug in one attempt
                log.exception("%s: unexpected error in a report attempt", self.peer_name)
                self.failures += 1
                ok = False
            if ok:
                delay = self.interval - (time.monotonic() - started)
            else:
                delay = self.retry_delay()
            self._wake.wait(max(0.0, delay))  # report_soon() and stop() cut the wait short
            self._wake.clear()
            if self._stop.is_set():
                break
        log.info("EMA for %s stopped", self.peer_name)

    def start_thread(self) -> threading.Thread:
        """Run :meth:`run_forever` in a daemon thread (e.g. inside a peer process)."""
        if self._thread is not None and self._thread.is_alive():
            return self._thread
        self._stop.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self.run_forever, name=f"ema-{self.peer_name}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to stop; wait up to ``timeout`` s for the thread if one runs.

        Wakes the loop at once (it waits on an Event); an HTTP call in flight
        finishes first, bounded by the request timeout.
        """
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Stop and release the HTTP session if this reporter created it."""
        self.stop(timeout=self.timeout)
        if self._owns_session:
            self.session.close()


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
