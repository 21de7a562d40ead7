"""A site's submit-file policy from a TOML file (``submit_policy`` in the peer's configuration).

The rules themselves are :class:`peer.submit_description.Policy` (what is
refused and why is documented there).  A site changes them relative to the
defaults, so a new default refusal in a later version still applies::

    # /etc/pocketgrid/policy.toml
    [policy]
    allow_universes = ["container"]      # e.g. a pool that runs container jobs
    forbid_keys = ["priority"]           # refuse more submit commands
    allow_keys = ["accounting_group"]    # or fewer (think twice: see submit_description.py)
    forbid_attributes = ["MaxWallTime"]  # +Attr / MY.Attr
    allow_attributes = []
    allowed_url_schemes = ["https"]      # transfer_input_files URLs
    max_submit_bytes = 65536
    expand_timeout_seconds = 10
    expand_memory_bytes = 1073741824

Every peer applies its own policy: the entry peer before placement, the site
chosen to run the job again when it stages it.  A refusal is a 400 whose
message names the key (a site that refuses a job the entry peer accepted
answers that 400 to the client; the job is not tried elsewhere).  Unknown
keys in the file are an error, so a typo never goes unnoticed.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Mapping

from ..submit_description import (
    DEFAULT_FORBIDDEN_ATTRIBUTES,
    DEFAULT_FORBIDDEN_KEYS,
    DEFAULT_FORBIDDEN_UNIVERSES,
    Policy,
)

_SETS = {
    "universes": ("forbidden_universes", DEFAULT_FORBIDDEN_UNIVERSES),
    "keys": ("forbidden_keys", DEFAULT_FORBIDDEN_KEYS),
    "attributes": ("forbidden_attributes", DEFAULT_FORBIDDEN_ATTRIBUTES),
}
_SCALARS = {"max_submit_bytes": int, "expand_timeout_seconds": float, "expand_memory_bytes": int}


def _names(table: Mapping[str, Any], key: str) -> set[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"submit policy: {key} must be a list of names")
    return {v.lower() for v in value}


def policy_from_mapping(table: Mapping[str, Any]) -> Policy:
    """A Policy from the ``[policy]`` table (defaults changed by allow_*/forbid_* lists)."""
    known = {f"{verb}_{what}" for verb in ("allow", "forbid") for what in _SETS} | set(_SCALARS) | {
        "allowed_url_schemes"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"submit policy: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {}
    for what, (field, default) in _SETS.items():
        kwargs[field] = frozenset((set(default) | _names(table, f"forbid_{what}")) - _names(table, f"allow_{what}"))
    if "allowed_url_schemes" in table:
        kwargs["allowed_url_schemes"] = frozenset(_names(table, "allowed_url_schemes"))
    for key, kind in _SCALARS.items():
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"submit policy: {key} must be a positive number")
            kwargs[key] = kind(value)
    return Policy(**kwargs)


def load_site_policy(path: str | Path | None) -> Policy:
    """The site's Policy from a TOML file (table ``[policy]``); the defaults when ``path`` is empty."""
    if not path:
        return Policy()
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    return policy_from_mapping(data.get("policy", data))
