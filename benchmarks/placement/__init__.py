"""Placement simulator: the broker's placement policies on a virtual grid.

``python -m benchmarks.placement --policy NAME --workload FILE.json --seed N``
runs one workload under one policy and prints JSON (``--placement split``:
jobs split over sites by ``broker.split``; ``--fail SITE@SECONDS``: a site
going down); ``--scenario NAME`` runs the named scenarios of issue 14.  The policies are the
broker's own (``broker.placement``), imported, not copied; ``oracle`` is a
simulator-only policy with perfect current information.  The workload format
is documented in ``benchmarks/placement/README.md``.
"""
from .simulator import ORACLE, Manager, Oracle, Simulation, simulate
from .workload import PeerSpec, SimJob, Workload, WorkloadError, load_workload, parse_workload

__all__ = [
    "ORACLE",
    "Manager",
    "Oracle",
    "PeerSpec",
    "SimJob",
    "Simulation",
    "Workload",
    "WorkloadError",
    "load_workload",
    "parse_workload",
    "simulate",
]
