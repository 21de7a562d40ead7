"""The pocketgrid client: a small, guessable API over the peers' REST interface.

    from mobile_client import Client
    c = Client("https://127.0.0.1:8650", ca="pki/ca.pem")
    c.login("pki/users/alice.pem", "pki/users/alice.key")   # or c.pair("ABCD-EFGH") on a phone
    job = c.submit("hist", "analyse.py", "job.sub", inputs=["data/run1.txt"])
    final = c.wait(job["id"])
    for out in c.fetch_all(job["id"], "results/"):
        print(out.path, out.sha256)

Only ``requests`` is needed.  Retries use urllib3's ``Retry`` (502/503/504,
honouring ``Retry-After``, and one read error); a submit is safe to retry
because it always carries an ``Idempotency-Key``.  When a peer cannot be
reached at all (refused, unresolvable, connect timeout, a certificate that
does not verify), the next known peer is tried at once, without a backoff:
every peer is an entry point and job IDs name their home.  When none
answers, :class:`PeerUnreachable` says why for each one, in words a person
can act on.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import time
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit
from typing import Any, Callable, Iterable
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pocketgrid.http import Session, never_reached
from pocketgrid.transfer import DEFAULT_CHUNK, DownloadResult, download


class ApiError(Exception):
    """The server refused a request; ``message`` is the server's explanation."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None, *,
                 peer: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.body = body or {}
        #: The peer URL that answered (None for a refusal made before sending).
        self.peer = peer


class PeerUnreachable(ConnectionError):
    """No peer could be reached; ``reasons`` lists ``(url, why)`` for each peer tried."""

    def __init__(self, reasons: list[tuple[str, str]], ca: str | None) -> None:
        self.reasons = reasons
        self.ca = ca
        super().__init__(self._text())

    def _text(self) -> str:
        tls = [(url, why) for url, why in self.reasons if not why.startswith(_NETWORK_REASONS)]
        if tls:  # a certificate problem: the same fix on every peer, say it once per peer
            return "; ".join(f"{url}: {why}" for url, why in tls)
        peers = ", ".join(f"{url} ({why})" for url, why in self.reasons)
        if all(why.startswith("unknown host") for _, why in self.reasons):
            return f"no peer answered: {peers} — check the address, or give another with --peer"
        return f"no peer answered: {peers} — is it running? give another with --peer"


#: Reasons that are about the network, not about certificates.
_NETWORK_REASONS = ("connection refused", "unknown host", "timed out", "unreachable", "connection failed")


def _find(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` in ``exc``'s reasons, arguments, causes and contexts."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        todo += [getattr(e, "reason", None), e.__cause__, e.__context__]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    return None


def describe_failure(exc: requests.RequestException, url: str, ca: str | None) -> str | None:
    """What went wrong reaching ``url``, in words a person can act on, if the request was
    never delivered (refused, unknown host, connect timeout, a certificate that does not
    verify, not TLS); None when it may have reached the peer."""
    host = urlsplit(url).hostname or url
    where = f"the CA in {ca}" if ca else "the system's trust store"
    verify = _find(exc, ssl.SSLCertVerificationError)
    if verify is not None:
        code = getattr(verify, "verify_code", None)
        text = getattr(verify, "verify_message", "") or str(verify)
        if code in (62, 64) or "mismatch" in text:
            return (f"the peer's certificate is not issued for {host!r} (hostname mismatch): use the host name or "
                    f"address it was issued for (see `pocketgrid pki show` of the peer's host certificate)")
        if code == 10 or "expired" in text:
            return "the peer's certificate has expired: its administrator must issue a new one (`pocketgrid pki issue-host`)"
        if code == 9 or "not yet valid" in text:
            return "the peer's certificate is not valid yet: check this device's clock"
        return f"the peer's certificate is not signed by {where}: pass the site CA with --ca ({text})"
    tls = _find(exc, ssl.SSLError)
    if tls is not None and "WRONG_VERSION_NUMBER" in str(tls):
        return "the peer does not speak TLS: is it a development peer (--insecure-http)? then use http://"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "timed out connecting"
    if isinstance(exc, requests.ConnectionError) and never_reached(exc):
        if _find(exc, ConnectionRefusedError) is not None or "refused" in str(exc).lower():
            return "connection refused"
        if "resolve" in str(exc).lower() or "Name or service not known" in str(exc):
            return f"unknown host {host!r}"
        if "unreachable" in str(exc).lower():
            return "network unreachable"
        return "connection failed"
    return None


#: Connect timeout (s): an unreachable address costs this, then the next peer is tried.
CONNECT_TIMEOUT = 10.0

#: POST routes safe to send twice: a submit carries an Idempotency-Key.
_RESENDABLE_POSTS = frozenset({"/api/v1/jobs"})


class _PeerRetry(Retry):
    """urllib3's ``Retry``, except that a read error (sent, no whole answer) is retried only where
    a second delivery is harmless: idempotent methods and submits.  A POST such as adding an
    ACL rule is not sent again (it could add the rule twice); 502/503/504 answers (the peer did
    not do it) are retried for every method, honouring ``Retry-After``."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # type: ignore[override]
        if error is not None and self._is_read_error(error) and not _resendable(method, url):
            raise error.with_traceback(_stacktrace)
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _resendable(method: str | None, url: str | None) -> bool:
    if method is None:
        return False
    if method.upper() in Retry.DEFAULT_ALLOWED_METHODS:
        return True
    return method.upper() == "POST" and urlsplit(url or "").path in _RESENDABLE_POSTS


def _session(retries: int) -> requests.Session:
    s = Session()
    retry = _PeerRetry(
        total=retries,
        # No retry (and no backoff) before the request reached a peer: _request
        # moves on to the next peer at once, and says why when none answers.
        connect=0,
        other=0,  # TLS failures: a wrong CA does not get better by asking again
        read=1,  # idempotent requests and submits only (_PeerRetry)
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
        reasons: list[tuple[str, str]] = []
        read = timeout or self.timeout
        ca = self.session.verify if isinstance(self.session.verify, str) else None
        for i, base in enumerate(list(self.peers)):
            try:
                r = self.session.request(method, f"{base}{path}", timeout=(min(CONNECT_TIMEOUT, read), read), **kw)
            except requests.ConnectionError as exc:
                why = describe_failure(exc, base, ca)
                if why is None:  # it may have arrived: never send it elsewhere
                    raise
                reasons.append((base, why))
                continue
            if i:
                self.peers.insert(0, self.peers.pop(i))
            return r
        raise PeerUnreachable(reasons, ca)

    def _check(self, r: requests.Response) -> requests.Response:
        if r.status_code >= 400:
            try:
                body = r.json()
                message = body.get("error", r.text)
            except ValueError:
                body, message = None, r.text[:300]
            peer = next((p for p in self.peers if r.url.startswith(p)), None)
            raise ApiError(r.status_code, message, body, peer=peer)
        return r

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._check(self._request(method, path, **kw)).json()

    @property
    def base_url(self) -> str:
        return self.peers[0]

    # ---- system -----------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def system(self, *, detail: bool = False) -> dict[str, Any]:
        """The broker, its epoch and the membership as the entry peer sees them.

        ``detail``: the broker's view instead (asked through the entry peer), each
        member with ``alive``, ``last_seen_age``, ``coefficient``, ``report_age`` and
        ``executor``; ``detail_error`` says why when the broker did not answer."""
        return self._json("GET", "/api/v1/broker", params={"detail": 1} if detail else {})

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

    def tokens(self, *, everyone: bool = False, local: bool = False) -> list[dict[str, Any]]:
        """Your tokens issued by any peer that answered (devices included), newest first, each with its ``peer``."""
        return self.token_list(everyone=everyone, local=local)["tokens"]

    def token_list(self, *, everyone: bool = False, local: bool = False) -> dict[str, Any]:
        """``{"tokens": [...], "unreachable_peers": [names]}``; ``everyone``: administrators, every user's;
        ``local``: only the tokens the entry peer issued."""
        params = {**({"all": 1} if everyone else {}), **({"local": 1} if local else {})}
        return self._json("GET", "/api/v1/auth/tokens", params=params)

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

    def audit(self, *, limit: int = 100, action: str | None = None, local: bool = False) -> list[dict[str, Any]]:
        """The audit events of every peer that answered, newest first, each with its ``peer``."""
        return self.audit_log(limit=limit, action=action, local=local)["events"]

    def audit_log(self, *, limit: int = 100, action: str | None = None, local: bool = False) -> dict[str, Any]:
        """``{"events": [...], "unreachable_peers": [names]}``; ``local``: the entry peer's events only."""
        params: dict[str, Any] = {"limit": limit}
        if action:
            params["action"] = action
        if local:
            params["local"] = 1
        return self._json("GET", "/api/v1/admin/audit", params=params)

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
        """Your jobs on every peer that answered (see :meth:`job_list` for the ones that did not)."""
        return self.job_list()["jobs"]

    def job_list(self) -> dict[str, Any]:
        """``{"jobs": [...], "unreachable_peers": [names]}``: the list is partial when a peer did not answer."""
        return self._json("GET", "/api/v1/jobs")

    def status(self, job_id: str, *, wait: float = 0, etag: str | None = None, history: bool = False,
               placement: bool = False) -> tuple[dict[str, Any] | None, str | None]:
        """One status poll.  With ``etag`` and ``wait``, the server holds the
        request until the status changes (or ``wait`` s pass): returns
        ``(None, etag)`` when nothing changed.  ``history``: each input's
        attempts (site, piece, times, verdict, reason) and its current proc's
        past states; ``placement``: every dispatch round's split with the
        ranking's score parts."""
        # Only what the server needs: an unchanged poll is one small request and a 304.
        headers: dict[str, str | None] = {"Accept": None, "Accept-Encoding": None, "Connection": None}
        if etag:
            headers["If-None-Match"] = etag
        params: dict[str, Any] = {"wait": wait} if wait else {}
        if history:
            params["history"] = 1
        if placement:
            params["placement"] = 1
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
            try:
                new, etag = self.status(job_id, wait=remaining, etag=etag)
            except ApiError as exc:
                if exc.status != 429:
                    raise
                # The peer holds as many waiting requests as it can: wait as told, then ask again.
                time.sleep(min(_retry_after(exc), remaining))
                continue
            if new is not None:
                status = new

    def kill(self, job_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/api/v1/jobs/{job_id}")

    def pin(self, job_id: str) -> dict[str, Any]:
        """Keep a job and its outputs until :meth:`unpin` (finished jobs are otherwise removed after the
        site's retention time).  Returns ``{id, pinned, finished_at, expires_at}``."""
        return self._json("POST", f"/api/v1/jobs/{quote(job_id)}/pin")

    def unpin(self, job_id: str) -> dict[str, Any]:
        """Let a job expire again; ``expires_at`` says when (None while it runs)."""
        return self._json("DELETE", f"/api/v1/jobs/{quote(job_id)}/pin")

    def purge(self, job_id: str) -> dict[str, Any]:
        """Remove a finished job, its files and its record now (frees your quota); 409 while it runs."""
        return self._json("POST", f"/api/v1/jobs/{quote(job_id)}/purge")

    def delete_upload(self, path: str) -> dict[str, Any]:
        """Remove one of your uploads now: ``uploads/u-.../NAME`` as :meth:`upload` returned it, or just the
        name inside your own upload area."""
        rel = path[len("uploads/"):] if path.startswith("uploads/") else path  # else: a name in your own area
        return self._json("DELETE", f"/api/v1/files/uploads/{quote(rel)}")

    def gc(self, *, dry_run: bool = True, at: float | None = None, local: bool = False) -> dict[str, Any]:
        """Administrators: what the retention sweeper removes on each peer (``dry_run``: would remove, now or at
        ``at``), ``{"peers": [{peer, remove, keep, bytes, ...}], "unreachable_peers": [...]}``."""
        params: dict[str, Any] = {**({"at": at} if at is not None else {}), **({"local": 1} if local else {})}
        return self._json("GET" if dry_run else "POST", "/api/v1/admin/gc", params=params, timeout=self.timeout + 60)

    def retry(self, job_id: str, *, inputs: list[int] | None = None, failed: bool = False) -> dict[str, Any]:
        """Run finished inputs of a job again (``inputs``, or every ``failed`` one): a new attempt each.

        Returns ``{"id", "inputs": [started], "attempts": {index: number}}``; an
        :class:`ApiError` 409 says why when nothing can run again.
        """
        body: dict[str, Any] = {}
        if inputs is not None:
            body["inputs"] = list(inputs)
        if failed:
            body["failed"] = True
        return self._json("POST", f"/api/v1/jobs/{job_id}/retry", json=body)

    def release(self, job_id: str, inputs: list[int] | None = None) -> dict[str, Any]:
        """Release the job's held inputs (all, or ``inputs``): ``{id, released_procs, inputs}``.
        Nothing held is an ApiError 409."""
        kw: dict[str, Any] = {"json": {"inputs": list(inputs)}} if inputs else {}
        return self._json("POST", f"/api/v1/jobs/{job_id}/release", **kw)

    def placements(self, *, limit: int = 20) -> dict[str, Any]:
        """Administrators: the broker's recent placement decisions, newest first."""
        return self._json("GET", "/api/v1/broker/placements", params={"limit": limit})

    def outputs(self, job_id: str, *, start: int = 0, limit: int | None = None) -> dict[str, Any]:
        """Per input, its output files (name, size, sha256) and site: every input, or ``limit`` of
        them from input ``start`` (the answer's ``next`` starts the page after; None after the last)."""
        params = {"start": start, **({"limit": limit} if limit is not None else {})} if start or limit else None
        return self._json("GET", f"/api/v1/jobs/{job_id}/outputs", params=params)

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
        overwrite: bool = False,
    ) -> "FetchResult":
        """Download one output, resuming a partial earlier attempt, verified by SHA-256.

        A file already at ``dest`` with the same SHA-256 is kept (``already_here``);
        a different one raises :class:`OutputExists` unless ``overwrite``.
        """
        if sha256 is None:
            for out in self.outputs(job_id)["outputs"]:
                if out["index"] == index:
                    for f in out["files"]:
                        if f["name"] == name:
                            sha256, size = f["sha256"], f["size"]
            if sha256 is None:
                raise ApiError(404, f"job {job_id} input {index} has no output {name!r}")
        dest = Path(dest)
        here = local_copy(dest, sha256, size)
        if here is True:
            return FetchResult(dest, dest.stat().st_size, sha256.lower(), 0, 0, already_here=True)
        if here is False and not overwrite:
            raise OutputExists([dest])
        url = f"{self.base_url}/api/v1/jobs/{quote(job_id)}/outputs/{index}/{quote(name)}"
        r = download(
            self.session, url, dest, expected_sha256=sha256, expected_size=size,
            chunk_bytes=chunk_bytes, rate_limit=rate_limit, progress=progress,
        )
        return FetchResult(r.path, r.size, r.sha256, r.resumed_from, r.transferred)

    def fetch_all(
        self,
        job_id: str,
        dest_dir: str | os.PathLike[str],
        *,
        chunk_bytes: int = DEFAULT_CHUNK,
        rate_limit: int | None = None,
        progress_factory: Callable[[str, int], Callable[[int, int | None], None]] | None = None,
        overwrite: bool = False,
    ) -> list["FetchResult"]:
        """Download every output of a job into ``dest_dir/<index>/<name>``.

        Nothing is fetched if a different file is already at one of those
        places (:class:`OutputExists` names them all) unless ``overwrite``;
        files already there with the right SHA-256 are kept.
        """
        planned = []
        for out in self.outputs(job_id)["outputs"]:
            for f in out["files"]:
                rel = PurePosixPath(f["name"])
                if rel.is_absolute() or ".." in rel.parts:  # never write outside dest_dir
                    raise ApiError(502, f"the peer sent an unsafe output name {f['name']!r}")
                planned.append((out["index"], f, Path(dest_dir) / str(out["index"]) / rel))
        if not overwrite:
            clashes = [dest for _, f, dest in planned if local_copy(dest, f["sha256"], f["size"]) is False]
            if clashes:
                raise OutputExists(clashes)
        results = []
        for index, f, dest in planned:
            progress = progress_factory(f"{index}/{f['name']}", f["size"]) if progress_factory else None
            results.append(
                self.fetch(job_id, index, f["name"], dest, sha256=f["sha256"], size=f["size"],
                           chunk_bytes=chunk_bytes, rate_limit=rate_limit, progress=progress, overwrite=overwrite)
            )
        return results


@dataclass
class FetchResult(DownloadResult):
    """A fetched output; ``already_here``: a verified copy was already at the destination (nothing sent)."""

    already_here: bool = False


class OutputExists(FileExistsError):
    """Different files are already where outputs would go; nothing was overwritten."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        names = ", ".join(str(p) for p in paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        super().__init__(f"{names} already exist{'s' if len(paths) == 1 else ''} with other contents")


def local_copy(path: Path, sha256: str | None, size: int | None) -> bool | None:
    """Is ``path`` already this file?  None: nothing there; True: same size and SHA-256; False: something else."""
    try:
        if not path.is_file():
            return False if path.exists() else None
        if size is not None and path.stat().st_size != size:
            return False
        with open(path, "rb") as fh:
            return sha256 is not None and hashlib.file_digest(fh, "sha256").hexdigest() == sha256.lower()
    except OSError:
        return False


def _retry_after(exc: "ApiError", default: float = 5.0) -> float:
    """Seconds the server asked us to wait (``retry_after`` in its JSON error, else ``default``)."""
    try:
        return max(0.0, float(exc.body.get("retry_after", default)))
    except (TypeError, ValueError):
        return default


FINAL_STATES = frozenset({"completed", "failed", "removed"})
