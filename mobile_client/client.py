"""The pocketgrid client: a small, guessable API over the peers' REST interface.

    from mobile_client import Client
    c = Client("https://127.0.0.1:8650", ca="pki/ca.pem")
    c.login("pki/users/alice.pem", "pki/users/alice.key")   # or c.pair("ABCD-EFGH") on a phone
    job = c.submit("hist", "analyse.py", "job.sub", inputs=["data/run1.txt"])
    final = c.wait(job["id"])
    for out in c.fetch_all(job["id"], "results/"):
        print(out.path, out.sha256)

Only ``requests`` is needed.  Retries use urllib3's ``Retry`` (connection
errors and 502/503/504, honouring ``Retry-After``); a submit is safe to retry
because it always carries an ``Idempotency-Key``.  When a peer cannot be
reached at all, the next known peer is tried: every peer is an entry point
and job IDs name their owner.
"""
from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import quote
from typing import Any, Callable, Iterable

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pocketgrid.http import Session, never_reached
from pocketgrid.transfer import DEFAULT_CHUNK, DownloadResult, download


class ApiError(Exception):
    """The server refused a request; ``message`` is the server's explanation."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.body = body or {}


def _session(retries: int) -> requests.Session:
    s = Session()
    retry = Retry(
        total=retries,
        connect=retries,
        read=1,
        status=retries,
        backoff_factor=0.5,
        backoff_max=10,
        status_forcelist=(502, 503, 504),
        allowed_methods=None,  # POST too: submits carry an Idempotency-Key
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = "pocketgrid/0.1"  # short: it rides on every poll
    return s


class Client:
    def __init__(
        self,
        peers: str | Iterable[str],
        *,
        ca: str | os.PathLike[str] | None = None,
        token: str | None = None,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        retries: int = 4,
    ) -> None:
        """``ca``: the site CA bundle the peers' certificates are checked against
        (default: the system's trust store); ``token``: a bearer token from
        :meth:`login` or :meth:`pair`."""
        if isinstance(peers, str):
            peers = [p for p in peers.split(",") if p.strip()]
        self.peers = [p.strip().rstrip("/") for p in peers]
        if not self.peers:
            raise ValueError("give at least one peer URL")
        self.session = session or _session(retries)
        if ca is not None:
            self.session.verify = os.fspath(ca)
        self.token = token
        self.timeout = timeout

    @property
    def token(self) -> str | None:
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        self._token = value
        if value:
            self.session.headers["Authorization"] = f"Bearer {value}"
        else:
            self.session.headers.pop("Authorization", None)

    # ---- plumbing ---------------------------------------------------------
    def _request(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> requests.Response:
        """Send to the first reachable peer; move a peer that answered to the front.

        Only a request that never reached a peer moves on to the next one.
        After an ambiguous failure (sent, no answer) the error is raised:
        Idempotency-Keys are kept per entry peer, so re-sending a submit to
        another peer could create a second job; retry it on the same peer.
        """
        last: Exception | None = None
        for i, base in enumerate(list(self.peers)):
            try:
                r = self.session.request(method, f"{base}{path}", timeout=timeout or self.timeout, **kw)
            except requests.ConnectionError as exc:
                if not never_reached(exc):
                    raise
                last = exc
                continue
            if i:
                self.peers.insert(0, self.peers.pop(i))
            return r
        raise ConnectionError(f"no peer reachable ({', '.join(self.peers)}): {last}")

    @staticmethod
    def _check(r: requests.Response) -> requests.Response:
        if r.status_code >= 400:
            try:
                body = r.json()
                message = body.get("error", r.text)
            except ValueError:
                body, message = None, r.text[:300]
            raise ApiError(r.status_code, message, body)
        return r

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._check(self._request(method, path, **kw)).json()

    @property
    def base_url(self) -> str:
        return self.peers[0]

    # ---- system -----------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def system(self) -> dict[str, Any]:
        """The broker, its epoch and the membership as the entry peer sees them."""
        return self._json("GET", "/api/v1/broker")

    # ---- login ------------------------------------------------------------
    def login(self, cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> dict[str, Any]:
        """Log in with a user certificate: sign the peer's challenge; keeps and returns the token."""
        from pocketgrid.pki import load_private_key, sign_bytes

        private_key = load_private_key(key)
        certificate = Path(cert).read_text()
        challenge = self._json("POST", "/api/v1/auth/challenge")
        signature = sign_bytes(private_key, challenge["message"].encode())
        answer = self._json("POST", "/api/v1/auth/login", json={
            "nonce": challenge["nonce"],
            "certificate": certificate,
            "signature": base64.b64encode(signature).decode(),
        })
        self.token = answer["token"]
        return answer

    def pairing_code(self) -> dict[str, Any]:
        """A short single-use code to type on a phone (needs a certificate login)."""
        return self._json("POST", "/api/v1/auth/pairing")

    def pair(self, code: str, device: str = "phone") -> dict[str, Any]:
        """On the phone: trade a pairing code for this device's own token; keeps and returns it."""
        answer = self._json("POST", "/api/v1/auth/pair", json={"code": code, "device": device})
        self.token = answer["token"]
        return answer

    def logout(self) -> dict[str, Any]:
        """Revoke this client's token on every peer."""
        answer = self._json("POST", "/api/v1/auth/logout")
        self.token = None
        return answer

    def whoami(self) -> dict[str, Any]:
        return self._json("GET", "/api/v1/auth/whoami")

    def tokens(self, *, everyone: bool = False) -> list[dict[str, Any]]:
        """Your tokens issued by the entry peer (devices included)."""
        return self._json("GET", "/api/v1/auth/tokens", params={"all": 1} if everyone else {})["tokens"]

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke one token, e.g. a lost phone's, without logging out here."""
        return self._json("DELETE", f"/api/v1/auth/tokens/{quote(token_id)}")

    # ---- administration ----------------------------------------------------
    def acl(self) -> dict[str, Any]:
        return self._json("GET", "/api/v1/admin/acl")

    def acl_add(self, effect: str, group: str, match: str, value: str = "", *, position: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"effect": effect, "group": group, "match": match, "value": value}
        if position is not None:
            body["position"] = position
        return self._json("POST", "/api/v1/admin/acl", json=body)

    def acl_remove(self, rule_id: int) -> dict[str, Any]:
        return self._json("DELETE", f"/api/v1/admin/acl/{int(rule_id)}")

    def audit(self, *, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if action:
            params["action"] = action
        return self._json("GET", "/api/v1/admin/audit", params=params)["events"]

    # ---- files ------------------------------------------------------------
    def files(self, path: str = "") -> list[dict[str, Any]]:
        return self._json("GET", "/api/v1/files", params={"path": path})["files"]

    def glob(self, pattern: str) -> list[dict[str, Any]]:
        return self._json("GET", "/api/v1/files", params={"glob": pattern})["files"]

    def grep(self, text: str, *, glob: str = "*", regex: bool = False, ignore_case: bool = False) -> dict[str, Any]:
        params = {"grep": text, "glob": glob, "regex": int(regex), "icase": int(ignore_case)}
        return self._json("GET", "/api/v1/files", params=params)

    def checksum(self, path: str, algorithm: str = "sha256") -> str:
        return self._json("GET", f"/api/v1/files/{quote(path)}", params={"checksum": algorithm})[algorithm]

    def download(self, path: str, dest: str | os.PathLike[str], **kw: Any) -> DownloadResult:
        """Download a published file, resumable, verified by SHA-256."""
        info = self._json("GET", f"/api/v1/files/{quote(path)}", params={"checksum": "sha256"})
        return download(
            self.session, f"{self.base_url}/api/v1/files/{quote(path)}", dest,
            expected_sha256=info["sha256"], expected_size=info["size"], **kw,
        )

    def upload(self, local: str | os.PathLike[str], name: str | None = None,
               progress: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
        """Put a local file into the entry peer's private ``uploads/`` area, resumable and verified by
        SHA-256 (tus, mobile_client/upload.py): after Ctrl-C or a dropped link, the same call resumes.
        Returns ``{"path", "size", "sha256", ...}``; use ``path`` as a job input."""
        from .upload import DEFAULT_CHUNK as UPLOAD_CHUNK, UploadRejected, plain_session, upload

        limit = self.health().get("max_body_bytes")  # the first peer that answers is the entry peer
        chunk = min(UPLOAD_CHUNK, limit) if isinstance(limit, int) and limit > 0 else UPLOAD_CHUNK
        try:
            result = upload(plain_session(self.session), self.base_url, local, name=name, progress=progress,
                            chunk_bytes=chunk, timeout=self.timeout)
        except UploadRejected as exc:
            raise ApiError(exc.status, exc.message, exc.body) from None
        return result.to_dict()

    # ---- jobs -------------------------------------------------------------
    def submit(
        self,
        name: str,
        executable: str | os.PathLike[str] | bytes,
        submit_file: str | os.PathLike[str],
        inputs: list[str],
        *,
        executable_name: str | None = None,
        submit_text: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a job: one proc per input file (paths in the publishing area).

        ``executable`` is a path or the bytes themselves (then give
        ``executable_name``).  ``submit_file`` is a path; or pass the text as
        ``submit_text`` and ``submit_file`` as its name.
        """
        if isinstance(executable, bytes):
            exe_bytes = executable
            exe_name = executable_name or "executable"
        else:
            exe_bytes = Path(executable).read_bytes()
            exe_name = executable_name or Path(executable).name
        if submit_text is None:
            submit_text = Path(submit_file).read_text()
        submit_name = Path(submit_file).name
        key = idempotency_key or str(uuid.uuid4())
        r = self._request(
            "POST",
            "/api/v1/jobs",
            headers={"Idempotency-Key": key},
            data={"name": name, "executable_name": exe_name, "submit_name": submit_name, "inputs": json.dumps(inputs)},
            files={
                "executable": (exe_name, exe_bytes, "application/octet-stream"),
                "submit": (submit_name, submit_text.encode(), "text/plain"),
            },
        )
        return self._check(r).json()

    def jobs(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/v1/jobs")["jobs"]

    def status(self, job_id: str, *, wait: float = 0, etag: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
        """One status poll.  With ``etag`` and ``wait``, the server holds the
        request until the status changes (or ``wait`` s pass): returns
        ``(None, etag)`` when nothing changed."""
        # Only what the server needs: an unchanged poll is one small request and a 304.
        headers: dict[str, str | None] = {"Accept": None, "Accept-Encoding": None, "Connection": None}
        if etag:
            headers["If-None-Match"] = etag
        params = {"wait": wait} if wait else {}
        r = self._request("GET", f"/api/v1/jobs/{job_id}", headers=headers, params=params, timeout=self.timeout + wait)
        if r.status_code == 304:
            return None, etag
        self._check(r)
        return r.json(), r.headers.get("ETag")

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 20.0,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Long-poll until every input reached a final state; returns the last status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status, etag = self.status(job_id)
        assert status is not None
        while True:
            if on_change:
                on_change(status)
            if status["state"] in FINAL_STATES:
                return status
            remaining = poll if deadline is None else min(poll, deadline - time.monotonic())
            if remaining <= 0:
                raise TimeoutError(f"job {job_id} is still {status['state']}")
            new, etag = self.status(job_id, wait=remaining, etag=etag)
            if new is not None:
                status = new

    def kill(self, job_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/api/v1/jobs/{job_id}")

    def outputs(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/jobs/{job_id}/outputs")

    def fetch(
        self,
        job_id: str,
        index: int,
        name: str,
        dest: str | os.PathLike[str],
        *,
        sha256: str | None = None,
        size: int | None = None,
        chunk_bytes: int = DEFAULT_CHUNK,
        rate_limit: int | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> DownloadResult:
        """Download one output, resuming a partial earlier attempt, verified by SHA-256."""
        if sha256 is None:
            for out in self.outputs(job_id)["outputs"]:
                if out["index"] == index:
                    for f in out["files"]:
                        if f["name"] == name:
                            sha256, size = f["sha256"], f["size"]
            if sha256 is None:
                raise ApiError(404, f"job {job_id} input {index} has no output {name!r}")
        url = f"{self.base_url}/api/v1/jobs/{quote(job_id)}/outputs/{index}/{quote(name)}"
        return download(
            self.session, url, dest, expected_sha256=sha256, expected_size=size,
            chunk_bytes=chunk_bytes, rate_limit=rate_limit, progress=progress,
        )

    def fetch_all(
        self,
        job_id: str,
        dest_dir: str | os.PathLike[str],
        *,
        chunk_bytes: int = DEFAULT_CHUNK,
        rate_limit: int | None = None,
        progress_factory: Callable[[str, int], Callable[[int, int | None], None]] | None = None,
    ) -> list[DownloadResult]:
        """Download every output of a job into ``dest_dir/<index>/<name>``."""
        results = []
        for out in self.outputs(job_id)["outputs"]:
            for f in out["files"]:
                rel = PurePosixPath(f["name"])
                if rel.is_absolute() or ".." in rel.parts:  # never write outside dest_dir
                    raise ApiError(502, f"the peer sent an unsafe output name {f['name']!r}")
                dest = Path(dest_dir) / str(out["index"]) / rel
                progress = progress_factory(f"{out['index']}/{f['name']}", f["size"]) if progress_factory else None
                results.append(
                    self.fetch(job_id, out["index"], f["name"], dest, sha256=f["sha256"], size=f["size"],
                               chunk_bytes=chunk_bytes, rate_limit=rate_limit, progress=progress)
                )
        return results


FINAL_STATES = frozenset({"completed", "failed", "removed"})
