"""Executors: choose one for this peer.

``local``  the LocalExecutor (subprocesses on this host).
``condor`` the CondorExecutor (the site's HTCondor schedd); refuses to start
           as root and when no schedd answers, with a message that says why.
``auto``   Condor when a schedd answers within ``probe_timeout`` seconds and
           the peer is not root, else local; the choice and the reason are
           logged and shown by ``GET /healthz`` (``executor``).

The choice itself is :mod:`peer.executors.choice`.  This package imports
nothing on purpose: every proc of the LocalExecutor starts a fresh
``python -m peer.executors.local_runner``, and importing the executors (the
database layer, SQLAlchemy) there cost about a second of CPU per proc, a
second a small site spends 40 times when a 40-input job lands.
"""
