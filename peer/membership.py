"""What this peer knows of the system: the broker, the epoch, the members.

Pushed by the broker on every change and persisted (tables ``members`` and
``settings``), so a restarted peer knows the others, and the epoch it last
saw, without asking.  Job IDs name their owning peer; this is where a peer
name becomes a URL.

Claims to the broker role are ordered: a higher epoch wins; on equal epochs
the claimant with the lower join sequence number wins.  :meth:`apply` only
ever moves forward in that order, so the epoch never goes backwards.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import requests
from sqlalchemy import delete, select

from .db import Database
from .models import Member, Setting

log = logging.getLogger(__name__)


class Membership:
    def __init__(self, db: Database, *, name: str, url: str, http: requests.Session, timeout: float = 10.0) -> None:
        self.db = db
        self.name = name
        self.url = url
        self.http = http
        self.timeout = timeout
        self.broker: dict[str, str] | None = None
        self.epoch = 0
        self.seq: int | None = None
        #: Called when this peer held the role and a better claim arrived.
        self.on_step_down: Callable[[dict[str, str]], None] | None = None
        self._lock = threading.RLock()
        self._load()

    # ---- persistence ------------------------------------------------------
    def _load(self) -> None:
        with self.db.sessions() as s:
            row = s.get(Setting, "membership")
            if row is not None and isinstance(row.value, dict):
                self.broker = row.value.get("broker")
                self.epoch = int(row.value.get("epoch") or 0)
                self.seq = row.value.get("seq")

    def _save(self) -> None:
        with self.db.session() as s:
            value = {"broker": self.broker, "epoch": self.epoch, "seq": self.seq}
            row = s.get(Setting, "membership")
            if row is None:
                s.add(Setting(key="membership", value=value))
            else:
                row.value = value

    @property
    def is_broker(self) -> bool:
        return self.broker is not None and self.broker["name"] == self.name

    def _seq_of(self, name: str | None) -> int:
        if name is None:
            return 1 << 30
        with self.db.sessions() as s:
            m = s.get(Member, name)
            return m.seq if m is not None else 1 << 30

    def better(self, epoch: int, broker: dict[str, Any] | None, members: list[dict[str, Any]] | None = None) -> bool:
        """Is a claim (epoch, broker) better than the one we hold?"""
        if broker is None:
            return False
        if epoch != self.epoch:
            return epoch > self.epoch
        if self.broker is None or broker["name"] == self.broker["name"]:
            return True  # same claim (fresh membership) or we had none
        seqs = {m["name"]: int(m.get("seq", 0)) for m in members or []}
        theirs = seqs.get(broker["name"], self._seq_of(broker["name"]))
        ours = seqs.get(self.broker["name"], self._seq_of(self.broker["name"]))
        return theirs < ours

    def become_broker(self, epoch: int) -> None:
        with self._lock:
            if epoch < self.epoch:
                raise ValueError(f"refusing to claim epoch {epoch}: epoch {self.epoch} is already known")
            self.broker = {"name": self.name, "url": self.url}
            self.epoch = epoch
            self._save()

    def follow(self, broker: dict[str, str], epoch: int) -> bool:
        """Adopt a broker named by someone else (a 409 answer) if it is a better claim."""
        with self._lock:
            if not self.better(epoch, broker):
                return False
            was_broker = self.is_broker
            self.broker, self.epoch = dict(broker), epoch
            self._save()
        if was_broker and broker["name"] != self.name and self.on_step_down:
            self.on_step_down(broker)
        return True

    def apply(self, payload: dict[str, Any]) -> bool:
        """Adopt a pushed membership if its claim is not worse than ours."""
        epoch = int(payload.get("epoch", 0))
        broker = payload.get("broker")
        members = payload.get("members") or []
        with self._lock:
            if not self.better(epoch, broker, members):
                return False
            was_broker = self.is_broker
            self.epoch = epoch
            self.broker = broker or self.broker
            with self.db.session() as s:
                s.execute(delete(Member))
                for m in members:
                    s.add(Member(name=m["name"], url=m["url"], seq=int(m.get("seq", 0)), updated_at=time.time(),
                                 cert=m.get("cert")))
                    if m["name"] == self.name:
                        self.seq = int(m.get("seq", 0))
            self._save()
        if was_broker and not self.is_broker and self.on_step_down:
            log.warning("a better claim (epoch %d, broker %s) arrived: stepping down", epoch, self.broker["name"])
            self.on_step_down(self.broker)
        return True

    # ---- lookups ----------------------------------------------------------
    def members(self, *, with_certs: bool = False) -> list[dict[str, Any]]:
        """Members in sequence order; ``with_certs`` adds each one's host certificate (PEM)."""
        with self.db.sessions() as s:
            return [
                {"name": m.name, "url": m.url, "seq": m.seq, **({"cert": m.cert} if with_certs else {})}
                for m in s.scalars(select(Member).order_by(Member.seq))
            ]

    def cert_of(self, name: str) -> str | None:
        """A member's host certificate (PEM) as the broker saw it at registration, if known."""
        with self.db.sessions() as s:
            m = s.get(Member, name)
            return m.cert if m is not None else None

    def url_of(self, name: str) -> str | None:
        if name == self.name:
            return self.url
        with self.db.sessions() as s:
            m = s.get(Member, name)
            if m is not None:
                return m.url
        if self.refresh():
            with self.db.sessions() as s:
                m = s.get(Member, name)
                return m.url if m is not None else None
        return None

    def refresh(self) -> bool:
        """Ask the broker for the membership (after a miss)."""
        if self.broker is None or self.is_broker:
            return False
        try:
            r = self.http.get(f"{self.broker['url']}/api/v1/broker", timeout=self.timeout)
            r.raise_for_status()
            return self.apply(r.json())
        except (requests.RequestException, ValueError) as exc:
            log.info("membership refresh from %s failed: %s", self.broker["url"], exc)
            return False

    def probe(self) -> dict[str, Any] | None:
        """Ask the other known members for their view; return the best claim seen."""
        best: dict[str, Any] | None = None
        for m in self.members():
            if m["name"] == self.name:
                continue
            try:
                view = self.http.get(f"{m['url']}/api/v1/broker", timeout=min(self.timeout, 2.0)).json()
            except (requests.RequestException, ValueError):
                continue
            if not isinstance(view, dict) or not view.get("broker"):
                continue
            if best is None or (view["epoch"], -_seq(view, view["broker"]["name"])) > (
                best["epoch"], -_seq(best, best["broker"]["name"])):
                best = view
        return best

    # ---- joining ----------------------------------------------------------
    def join(self, urls: list[str], stop: threading.Event, *, max_delay: float = 10.0) -> None:
        """Register with the broker reachable through ``urls``; retries until it works."""
        delay = 0.2
        while not stop.is_set():
            for url in urls:
                target = url.rstrip("/")
                for _hop in range(3):  # follow "not the broker, ask X"
                    try:
                        r = self.http.post(
                            f"{target}/api/v1/broker/register",
                            json={"name": self.name, "url": self.url},
                            timeout=self.timeout,
                        )
                    except requests.RequestException as exc:
                        log.info("cannot reach %s to join: %s", target, exc)
                        break
                    body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
                    if r.status_code == 409 and body.get("broker"):
                        target = body["broker"]["url"]
                        continue
                    if r.ok:
                        self.apply(body)
                        log.info("joined: broker %s, epoch %s, seq %s", body["broker"]["name"], body["epoch"], body.get("seq"))
                        return
                    log.error("join refused by %s: %s", target, body.get("error", r.text))
                    break
            stop.wait(delay)
            delay = min(max_delay, delay * 2)

    def describe(self) -> dict[str, Any]:
        return {
            "self": {"name": self.name, "url": self.url, "seq": self.seq},
            "broker": self.broker,
            "epoch": self.epoch,
            "members": self.members(),
        }


def _seq(view: dict[str, Any], name: str) -> int:
    for m in view.get("members") or []:
        if m.get("name") == name:
            return int(m.get("seq", 0))
    return 1 << 30
