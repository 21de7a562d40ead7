"""The peer's schema migrations (Alembic): ``env.py``, ``versions/`` and the runner that applies them.

See runner.py for what happens at start and README.md here for how to add a revision.
"""
from .runner import (BASELINE, DatabaseNotAdoptable, DatabaseTooNew, SchemaError, SchemaState, UpgradeResult,
                     check, history, inspect_state, upgrade)

__all__ = ["BASELINE", "DatabaseNotAdoptable", "DatabaseTooNew", "SchemaError", "SchemaState", "UpgradeResult",
           "check", "history", "inspect_state", "upgrade"]
