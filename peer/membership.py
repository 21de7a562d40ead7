"""What this peer knows of the system: the broker, the epoch, the members.

Pushed by the broker on every change and persisted, so a restarted peer
knows the others without asking.  Job IDs name their owning peer; this is
where a peer name becomes a URL.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

import requests
from sqlalchemy import delete, select

from .db import Database
from .models import Member

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
        self._lock = threading.Lock()

    @property
    def is_broker(self) -> bool:
        return self.broker is not None and self.broker["name"] == self.name

    def become_broker(self, epoch: int) -> None:
        with self._lock:
            self.broker = {"name": self.name, "url": self.url}
            self.epoch = epoch

    def apply(self, payload: dict[str, Any]) -> bool:
        """Adopt a pushed membership if its epoch is not older than ours."""
        epoch = int(payload.get("epoch", 0))
        with self._lock:
            if epoch < self.epoch:
                return False
            self.epoch = epoch
            self.broker = payload.get("broker") or self.broker
            members = payload.get("members") or []
            with self.db.session() as s:
                s.execute(delete(Member))
                for m in members:
                    s.add(Member(name=m["name"], url=m["url"], seq=int(m.get("seq", 0)), updated_at=time.time()))
                    if m["name"] == self.name:
                        self.seq = int(m.get("seq", 0))
        return True

    def members(self) -> list[dict[str, Any]]:
        with self.db.sessions() as s:
            return [
                {"name": m.name, "url": m.url, "seq": m.seq}
                for m in s.scalars(select(Member).order_by(Member.seq))
            ]

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
