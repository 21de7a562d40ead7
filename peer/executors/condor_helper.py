"""The child process that makes the CondorExecutor's ``htcondor2`` calls.

Why a child process: ``htcondor2`` keeps the GIL while it waits for a daemon.
Measured here (htcondor2 25.14, a TCP listener that accepts and never
answers): ``Schedd.query`` blocked for 20.0 s and during those 20 s no other
Python thread of the process ran.  Inside the peer that would stop every
request thread (status, downloads, long-polls) whenever the site's schedd is
slow.  So the bindings run here, in one long-lived child per peer that reads
one JSON request per line on stdin and writes one JSON answer per line on
stdout; the peer waits for the answer with a deadline and kills and restarts
the child when the deadline passes (``peer.executors.condor.BindingsClient``).

This file imports only the standard library, htcondor2/classad2 and
``pocketgrid.matching`` (itself standard library + classad2), and is started
with ``runpy.run_path`` (not as ``peer.executors.condor_helper``), so the
child does not import the server (Flask, SQLAlchemy, ...).  It inherits the peer's
environment: ``CONDOR_CONFIG`` and ``_CONDOR_*`` (which schedd, which pool)
are the peer's, read when the child imports htcondor2 (the tests give both
their own configuration through it: tests/conftest.py).

Requests (``op`` and its arguments) and answers (``{"ok": true, ...}`` or
``{"ok": false, "error": str, "kind": str}``):

* ``probe`` [``address``]: locate the schedd (the local one through its
  address file, as the tools do; or the given sinful string) and run a query
  that matches nothing.  -> ``name``, ``address``, ``version``.
* ``submit`` ``table``, ``itemdata``: ``Schedd.submit(Submit(table),
  itemdata=iter(itemdata))`` -> ``cluster``, ``first_proc``, ``num_procs``.
* ``act`` ``action`` (``Remove``/``Release``/``Hold``), ``constraint``,
  ``reason``: ``Schedd.act`` -> the result counts (``TotalSuccess``, ...).
* ``query`` ``constraint``, ``projection``, [``limit``]: ``Schedd.query`` ->
  ``ads``: a list of dicts of the projected attributes.
* ``census`` ``peer``: this peer's idle and held procs (``PocketgridPeer``),
  one cheap projected query; the executor's periodic schedd probe ->
  ``procs``: ``[cluster, proc, JobStatus, HoldReasonCode]`` rows.
* ``analyze`` ``peer``, ``clusters``, [``max_age``]: does any slot match
  each cluster's job (its first proc's full job ad, as the schedd stores it)?
  The collector's slot ads are kept here and fetched again when older than
  ``max_age`` seconds; the matching is ``pocketgrid.matching`` (classad2) ->
  ``results`` ``{cluster: {slots, of, failing}}``, ``slots_at`` (when the
  slot ads were fetched), ``slots_error`` (why there are none).

Evaluating a job's requirements evaluates the user's text: it happens here,
in the child, never in the peer (peer/submit_description.py says why).
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

#: JobStatus values (condor_q): idle, held.
_IDLE, _HELD = 1, 5


def _plain(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


class _Schedd:
    def __init__(self) -> None:
        import htcondor2

        self.htcondor2 = htcondor2
        self.schedd = None
        self.location: dict[str, Any] = {}
        self.address: str | None = None

    def locate(self, address: str | None = None) -> Any:
        h = self.htcondor2
        if address is not None and address != self.address:
            self.schedd = None
            self.address = address
        if self.schedd is not None:
            return self.schedd
        if self.address:
            import classad2

            ad = classad2.ClassAd({"MyAddress": self.address, "Name": self.address, "MyType": "Scheduler",
                                   "CondorVersion": h.version()})
            self.location = {"name": self.address, "address": self.address}
            self.schedd = h.Schedd(ad)
            return self.schedd
        try:
            ad = h.Collector().locate(h.DaemonType.Schedd)
            self.location = {"name": _plain(ad.get("Name")), "address": _plain(ad.get("MyAddress")),
                             "version": _plain(ad.get("CondorVersion"))}
            self.schedd = h.Schedd(ad)
        except h.HTCondorException:
            self.schedd = h.Schedd()  # raises "Unable to locate local daemon" when there is none
            self.location = {}
        return self.schedd

    def forget(self) -> None:
        self.schedd = None

    # ---- slot ads, for the match analysis ------------------------------------
    slots: list[Any] | None = None
    slots_at: float = 0.0
    slots_error: str | None = None

    def slot_ads(self, max_age: float) -> list[Any] | None:
        """The collector's slot ads as capacity ads (pocketgrid.matching), fetched again when older than max_age."""
        if self.slots is not None and time.time() - self.slots_at < max_age:
            return self.slots
        from pocketgrid.matching import capacity_ads

        h = self.htcondor2
        try:
            ads = h.Collector().query(h.AdType.Startd, constraint="DynamicSlot =!= true")
        except h.HTCondorException as exc:
            self.slots_error = f"the collector did not answer: {' '.join(str(exc).split())[:200]}"
            return self.slots  # the last ones known, if any, are better than none
        self.slots, self.slots_at, self.slots_error = capacity_ads(ads), time.time(), None
        return self.slots


def _str(value: str) -> str:
    """A ClassAd string literal of a peer name (names are letters, digits, '-' and '_')."""
    if any(c in value for c in '"\\\n'):
        raise ValueError(f"cannot quote {value!r}")
    return f'"{value}"'


def _handle(state: _Schedd, req: dict[str, Any]) -> dict[str, Any]:
    h = state.htcondor2
    op = req.get("op")
    if op == "probe":
        schedd = state.locate(req.get("address"))
        schedd.query("false", ["ClusterId"], limit=1)
        return {"ok": True, **state.location}
    if op == "submit":
        schedd = state.locate()
        sub = h.Submit({str(k): str(v) for k, v in req["table"].items()})
        rows = [{str(k): str(v) for k, v in row.items()} for row in req["itemdata"]]
        result = schedd.submit(sub, itemdata=iter(rows))
        return {"ok": True, "cluster": int(result.cluster()), "first_proc": int(result.first_proc()),
                "num_procs": int(result.num_procs())}
    if op == "act":
        schedd = state.locate()
        action = getattr(h.JobAction, req["action"])
        # A plain str reason is ignored by htcondor2 25.x's Schedd.act (only a
        # (text, code) tuple is read), so pass the tuple form.
        result = schedd.act(action, req["constraint"], (req.get("reason") or "via pocketgrid", None))
        counts = {k: int(result.get(k, 0) or 0) for k in (
            "TotalSuccess", "TotalError", "TotalNotFound", "TotalBadStatus", "TotalAlreadyDone",
            "TotalPermissionDenied", "TotalJobAds")} if result is not None else {}
        return {"ok": True, **counts}
    if op == "query":
        schedd = state.locate()
        projection = list(req.get("projection") or [])
        ads = schedd.query(req.get("constraint", "true"), projection, limit=int(req.get("limit", -1)))
        return {"ok": True, "ads": [{k: _plain(ad.get(k)) for k in projection} for ad in ads]}
    if op == "census":
        schedd = state.locate()
        constraint = f"PocketgridPeer =?= {_str(req['peer'])} && (JobStatus == {_IDLE} || JobStatus == {_HELD})"
        ads = schedd.query(constraint, ["ClusterId", "ProcId", "JobStatus", "HoldReasonCode"])
        return {"ok": True, "procs": [[_plain(ad.get("ClusterId")), _plain(ad.get("ProcId")),
                                       _plain(ad.get("JobStatus")), _plain(ad.get("HoldReasonCode"))] for ad in ads]}
    if op == "analyze":
        from pocketgrid.matching import analyze

        schedd = state.locate()
        slots = state.slot_ads(float(req.get("max_age", 60.0)))
        results: dict[str, Any] = {}
        if slots is not None:
            for cluster in req.get("clusters", []):
                constraint = f"ClusterId == {int(cluster)} && PocketgridPeer =?= {_str(req['peer'])}"
                ads = schedd.query(constraint, [], limit=1)  # the full job ad: Requirements may name anything
                if ads:
                    results[str(int(cluster))] = analyze(ads[0], slots).to_dict()
        return {"ok": True, "results": results, "slots_at": state.slots_at or None, "slots_error": state.slots_error}
    return {"ok": False, "kind": "protocol", "error": f"unknown op {op!r}"}


def main() -> int:
    try:
        state = _Schedd()
    except Exception as exc:  # noqa: BLE001 - htcondor2 not importable: report on every request
        state = None
        import_error = f"cannot import htcondor2: {type(exc).__name__}: {exc}"
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except ValueError:
            reply: dict[str, Any] = {"ok": False, "kind": "protocol", "error": "request is not JSON"}
        else:
            if state is None:
                reply = {"ok": False, "kind": "import", "error": import_error}
            else:
                try:
                    reply = _handle(state, req)
                except Exception as exc:  # noqa: BLE001 - every failure is an answer
                    kind = "condor" if type(exc).__name__ == "HTCondorException" else type(exc).__name__
                    if kind != "condor":
                        traceback.print_exc(file=sys.stderr)
                    state.forget()  # re-locate next time (the schedd may have moved or restarted)
                    reply = {"ok": False, "kind": kind, "error": str(exc) or type(exc).__name__}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ in ("__main__", "_pocketgrid_condor_helper"):
    sys.exit(main())
