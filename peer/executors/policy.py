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
    allow_private_urls = false           # true: URLs may point at this site's own or private addresses
    site_host_names = ["grid.example.org"]  # more names of this site, refused in URLs like localhost
    url_resolve_timeout_seconds = 5
    max_submit_bytes = 65536
    expand_timeout_seconds = 10
    expand_memory_bytes = 1073741824
    unmatchable = "warn"                 # or "refuse": requirements no slot of this site matches

``allow_private_urls``: under HTCondor the site itself fetches a job's
``transfer_input_files`` URLs (its file-transfer plugins run on the execute
nodes), from inside its own network.  So by default a URL whose host is
``localhost``, this host's own name or address, one of ``site_host_names``, or
a name that ``socket.getaddrinfo`` resolves at submit time to a loopback,
link-local, private (RFC 1918, ULA), shared (100.64/10) or other non-public
address is refused (400 naming the key and the URL).  Set it to true on a site
whose jobs may fetch from its internal servers.  The check is made when the
job is submitted and again when it is handed to HTCondor, not when the plugin
connects: a name whose DNS answer changes in between (or that does not resolve
at submit time: accepted with a warning) is not caught, so a site that needs a
hard guarantee also blocks those ranges for jobs in its firewall.

``unmatchable``: what to do with a job whose requirements no slot of this
site matches (HTCondor's own ClassAd matching of the job ad against the
collector's slot ads, or against this host's machine ad where the peer runs
jobs itself: pocketgrid/matching.py).  ``warn`` (the default, as HTCondor
does) accepts it with a warning naming the requirement that fails; it stays
idle, and its status says why.  ``refuse`` answers 400 naming it, and the
entry peer tries the next site before giving the client that answer.

Every peer applies its own policy: the entry peer before placement, the site
chosen to run the job again when it stages it.  A refusal is a 400 whose
message names the key (a site that refuses a job the entry peer accepted
answers that 400 to the client; the job is not tried elsewhere).  Unknown
keys in the file are an error, so a typo never goes unnoticed.
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping

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
_SCALARS = {"max_submit_bytes": int, "expand_timeout_seconds": float, "expand_memory_bytes": int,
            "url_resolve_timeout_seconds": float}
_BOOLS = ("allow_private_urls",)
_CHOICES = {"unmatchable": ("warn", "refuse")}


def _names(table: Mapping[str, Any], key: str) -> set[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"submit policy: {key} must be a list of names")
    return {v.lower() for v in value}


def policy_from_mapping(table: Mapping[str, Any]) -> Policy:
    """A Policy from the ``[policy]`` table (defaults changed by allow_*/forbid_* lists)."""
    known = {f"{verb}_{what}" for verb in ("allow", "forbid") for what in _SETS} | set(_SCALARS) | set(_BOOLS) | {
        "allowed_url_schemes", "site_host_names"} | set(_CHOICES)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"submit policy: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {}
    for what, (field, default) in _SETS.items():
        kwargs[field] = frozenset((set(default) | _names(table, f"forbid_{what}")) - _names(table, f"allow_{what}"))
    if "allowed_url_schemes" in table:
        kwargs["allowed_url_schemes"] = frozenset(_names(table, "allowed_url_schemes"))
    if "site_host_names" in table:
        kwargs["site_host_names"] = frozenset(_names(table, "site_host_names"))
    for key in _BOOLS:
        if key in table:
            if not isinstance(table[key], bool):
                raise ValueError(f"submit policy: {key} must be true or false")
            kwargs[key] = table[key]
    for key, choices in _CHOICES.items():
        if key in table:
            if table[key] not in choices:
                raise ValueError(f"submit policy: {key} must be one of {', '.join(repr(c) for c in choices)}")
            kwargs[key] = table[key]
    for key, kind in _SCALARS.items():
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"submit policy: {key} must be a positive number")
            kwargs[key] = kind(value)
    return Policy(**kwargs)


def load_site_policy(path: str | Path | None, *, site_host_names: Iterable[str] = ()) -> Policy:
    """The site's Policy from a TOML file (table ``[policy]``); the defaults when ``path`` is empty.

    ``site_host_names`` (e.g. the host of the peer's public URL) are added to the file's own
    ``site_host_names``: URLs naming them are refused like ``localhost``.
    """
    policy = Policy()
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        policy = policy_from_mapping(data.get("policy", data))
    extra = {n.lower().rstrip(".") for n in site_host_names if n}
    if extra - policy.site_host_names:
        policy = dataclasses.replace(policy, site_host_names=policy.site_host_names | extra)
    return policy
