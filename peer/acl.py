"""Access-control rules kept in the database, in the style of Clarens ACLs.

Every request the peer serves belongs to one *operation group*
(:class:`Group`):

``files-read``
    browse, search and download published files;
``jobs-submit``
    submit jobs and upload their inputs;
``jobs-manage``
    see the status and outputs of, and kill, one's *own* jobs;
``admin``
    change the ACL, read the audit log, see and kill *anyone's* jobs.

A rule says ``allow`` or ``deny`` for one group (or ``*``, every group) to
the callers it *matches* (:class:`Match`):

``dn``
    the caller's certificate subject DN equals the value exactly;
``dn-substring``
    the value occurs somewhere in the DN (case-sensitive, as in Clarens), so
    ``/O=CERN/`` covers a whole organisation;
``vo``
    the caller's virtual organisation equals the value;
``any``
    every authenticated caller (the value must be empty).

How a question "may DN (in VO) do GROUP?" is answered (:meth:`AclStore.decide`):

1. An empty DN is nobody: denied.  (Authentication happens before this.)
2. DNs listed as bootstrap administrators in the configuration
   (``admins=``) are allowed *every* group, whatever the rules say.  Rules
   live in the database and can be changed through the API; if a rule could
   deny the configured administrators, one wrong ``deny * any`` would lock
   everybody out for good, with no way back but editing the database by
   hand.  To take someone's administrator rights away, remove them from the
   configuration.
3. The rules for the requested group and for ``*`` that match the caller are
   considered in position order.  **Deny wins**: if any of them denies, the
   answer is deny and the first such rule is named in the reason, however
   many allow rules come before or after it.  Otherwise, if any allows, the
   answer is allow (naming the first allowing rule).
4. No rule matched: the default.  Groups in ``default_allow`` (by default
   ``files-read``, ``jobs-submit`` and ``jobs-manage``) are allowed to every
   authenticated caller; ``admin`` is allowed to nobody (but the bootstrap
   administrators and those an ``allow admin`` rule names).

Deny-wins (rather than first-match) keeps rules independent of each other:
adding an ``allow`` can never silently cancel a ``deny`` someone else wrote
for a banned DN or VO.  Positions only order the listing and decide which
rule a reason names.

``decide`` runs on every request, so it never touches the database once the
rules are loaded: the whole rule set is an immutable snapshot, loaded lazily
under a lock and dropped on every change this store makes (``add``,
``remove``, ``replace_all``) or when told to (:meth:`AclStore.invalidate`,
e.g. after another process changed the table).  The peer runs as a single
process (see peer/server.py), so the snapshot is always current there.

Every change also bumps a version number (the ``acl_version`` row of the
``settings`` table, in the same transaction as the change) so peers can tell
whose rule set is newer when they replicate it (:meth:`AclStore.replace_all`).

Note: :class:`AclRule` is declared on ``peer.models.Base`` here, so this
module must be imported before ``Database.create_all(Base.metadata)`` for the
``acl_rules`` table to be created.
"""
from __future__ import annotations

import logging
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Iterable, Mapping

from sqlalchemy import Float, Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from pocketgrid.errors import BadRequest, NotFound

from .db import Database
from .models import Base, Setting

log = logging.getLogger(__name__)


class Group(StrEnum):
    """The operation groups a rule can grant or refuse."""

    FILES_READ = "files-read"
    JOBS_SUBMIT = "jobs-submit"
    JOBS_MANAGE = "jobs-manage"
    ADMIN = "admin"


#: In a rule's group: the rule applies to every group.
ALL_GROUPS = "*"


class Match(StrEnum):
    """How a rule's value is compared with the caller."""

    DN = "dn"
    DN_SUBSTRING = "dn-substring"
    VO = "vo"
    ANY = "any"


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


DEFAULT_ALLOW: frozenset[str] = frozenset({Group.FILES_READ, Group.JOBS_SUBMIT, Group.JOBS_MANAGE})
#: Longest value (and created_by) a rule may carry.
MAX_VALUE_LENGTH = 1024
#: The ``settings`` row holding the rule-set version.
VERSION_KEY = "acl_version"

_GROUPS = frozenset(g.value for g in Group)
_RULE_GROUPS = _GROUPS | {ALL_GROUPS}
_MATCHES = frozenset(m.value for m in Match)
_EFFECTS = frozenset(e.value for e in Effect)
_RULE_KEYS = frozenset({"id", "position", "effect", "group", "match", "value", "created_by", "created_at"})


class AclRule(Base):
    """One ACL rule row.  ``position`` orders rules (ties broken by ``id``)."""

    __tablename__ = "acl_rules"
    # Never reuse the id of a removed rule: audit entries name rules by id.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    position: Mapped[int] = mapped_column(Integer, index=True)
    effect: Mapped[str] = mapped_column(String(10))
    group: Mapped[str] = mapped_column(String(20))
    match: Mapped[str] = mapped_column(String(20))
    value: Mapped[str] = mapped_column(String(MAX_VALUE_LENGTH), default="")
    created_by: Mapped[str] = mapped_column(String(MAX_VALUE_LENGTH), default="")
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


@dataclass(frozen=True)
class Rule:
    """A rule as plain data (detached from any session)."""

    id: int
    position: int
    effect: str
    group: str
    match: str
    value: str
    created_by: str
    created_at: float

    @classmethod
    def from_row(cls, row: AclRule) -> Rule:
        return cls(
            id=row.id,
            position=row.position,
            effect=row.effect,
            group=row.group,
            match=row.match,
            value=row.value,
            created_by=row.created_by,
            created_at=row.created_at,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "position": self.position,
            "effect": self.effect,
            "group": self.group,
            "match": self.match,
            "value": self.value,
            "created_by": self.created_by,
            "created_at": self.created_at,
        }

    def describe(self) -> str:
        """``deny jobs-submit vo=cms``, ``allow * any``: the rule in one phrase."""
        if self.match == Match.ANY:
            return f"{self.effect} {self.group} any"
        return f"{self.effect} {self.group} {self.match}={self.value}"

    def matches(self, dn: str, vo: str | None) -> bool:
        if self.match == Match.DN:
            return dn == self.value
        if self.match == Match.DN_SUBSTRING:
            return self.value in dn
        if self.match == Match.VO:
            return vo is not None and vo == self.value
        return self.match == Match.ANY


@dataclass(frozen=True)
class Decision:
    """The answer to "may this caller do this?", with a reason a person can act on."""

    allowed: bool
    rule: Rule | None
    reason: str


@dataclass(frozen=True)
class _Snapshot:
    """Everything ``decide`` needs, immutable, so readers need no lock."""

    rules: tuple[Rule, ...]
    version: int
    #: For each group: the rules for that group or ``*``, in order.
    by_group: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, rules: Iterable[Rule], version: int) -> _Snapshot:
        ordered = tuple(rules)
        by_group = {
            g: tuple(r for r in ordered if r.group == g or r.group == ALL_GROUPS) for g in _GROUPS
        }
        return cls(ordered, version, by_group)


@dataclass(frozen=True)
class _Fields:
    """A validated rule, not yet stored."""

    effect: str
    group: str
    match: str
    value: str
    created_by: str
    position: int | None = None
    id: int | None = None
    created_at: float | None = None


# ---- validation -------------------------------------------------------------
def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _text(name: str, value: object, *, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}{name} must be a string, not {type(value).__name__}")
    if len(value) > MAX_VALUE_LENGTH:
        raise BadRequest(f"{where}{name} is {len(value)} characters long; the limit is {MAX_VALUE_LENGTH}")
    if _has_control(value):
        raise BadRequest(f"{where}{name} contains control characters (newlines, tabs, ...); remove them")
    return value


def _choice(name: str, value: object, allowed: Iterable[str], *, where: str) -> str:
    choices = sorted(allowed)
    if not isinstance(value, str) or value not in choices:
        raise BadRequest(f"{where}unknown {name} {value!r}: use one of {', '.join(choices)}")
    return str(value)  # a plain str, also when given a StrEnum member


#: The database column is a 32-bit INTEGER (PostgreSQL): anything wider cannot be stored or looked up.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1


def _int(name: str, value: object, *, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{where}{name} must be an integer, not {value!r}")
    if not INT_MIN <= value <= INT_MAX:
        raise BadRequest(f"{where}{name} must be an integer from {INT_MIN} to {INT_MAX}, not {value}")
    return value


def _validate(
    effect: object,
    group: object,
    match: object,
    value: object,
    created_by: object,
    *,
    position: object = None,
    rule_id: object = None,
    created_at: object = None,
    where: str = "",
) -> _Fields:
    """Check one rule; raise BadRequest naming the first bad field."""
    effect = _choice("effect", effect, _EFFECTS, where=where)
    group = _choice("group", group, _RULE_GROUPS, where=where)
    match = _choice("match", match, _MATCHES, where=where)
    value = _text("value", value, where=where)
    if match == Match.ANY:
        if value != "":
            raise BadRequest(f"{where}match 'any' takes no value (got {value!r}); leave the value empty")
    elif not value.strip():
        what = {"dn": "a subject DN", "dn-substring": "part of a subject DN", "vo": "a VO name"}[match]
        raise BadRequest(f"{where}match {match!r} needs a value: give {what}")
    created_by = _text("created_by", created_by, where=where)
    if position is not None:
        position = _int("position", position, where=where)
    if rule_id is not None:
        rule_id = _int("id", rule_id, where=where)
        if rule_id <= 0:
            raise BadRequest(f"{where}id must be a positive integer, not {rule_id}")
    if created_at is not None:
        if isinstance(created_at, bool) or not isinstance(created_at, (int, float)):
            raise BadRequest(f"{where}created_at must be a number (seconds since the epoch), not {created_at!r}")
        created_at = float(created_at)
    return _Fields(effect, group, match, value, created_by, position, rule_id, created_at)


class AclStore:
    """The rule set of one peer: stored in the database, answered from memory.

    ``admins`` are the bootstrap administrator DNs from the configuration:
    always allowed every group (see the module docstring for why).
    ``default_allow`` are the groups allowed to any authenticated caller
    when no rule matches.
    """

    def __init__(
        self,
        db: Database,
        *,
        admins: Iterable[str] = (),
        default_allow: Iterable[str] = DEFAULT_ALLOW,
    ) -> None:
        self.db = db
        self.admins: frozenset[str] = frozenset(a for a in admins if a)
        default = frozenset(str(g) for g in default_allow)
        unknown = default - _GROUPS
        if unknown:
            raise ValueError(f"default_allow names unknown groups {sorted(unknown)}: use {sorted(_GROUPS)}")
        self.default_allow = default
        self._snapshot: _Snapshot | None = None
        #: Guards loading the snapshot (one loader at a time) and dropping it.
        self._cache_lock = threading.Lock()
        #: Serialises this process's writers, so version bumps never race.
        self._write_lock = threading.Lock()

    # ---- cache ------------------------------------------------------------
    def _current(self) -> _Snapshot:
        snap = self._snapshot  # one attribute read: safe without the lock
        if snap is not None:
            return snap
        with self._cache_lock:
            if self._snapshot is None:
                self._snapshot = self._load()
                log.debug("loaded %d ACL rules (version %d)", len(self._snapshot.rules), self._snapshot.version)
            return self._snapshot

    def _load(self) -> _Snapshot:
        with self.db.sessions() as s:
            rows = s.scalars(select(AclRule).order_by(AclRule.position, AclRule.id)).all()
            rules = [Rule.from_row(r) for r in rows]
            version = self._read_version(s)
        return _Snapshot.build(rules, version)

    def invalidate(self) -> None:
        """Drop the cached rules; the next question reloads them from the database."""
        with self._cache_lock:
            self._snapshot = None

    # ---- version ----------------------------------------------------------
    @staticmethod
    def _read_version(s: Session) -> int:
        row = s.get(Setting, VERSION_KEY)
        if row is None:
            return 0
        try:
            return int(row.value)
        except (TypeError, ValueError):
            log.warning("settings[%s] holds %r, not a number; treating the ACL version as 0", VERSION_KEY, row.value)
            return 0

    @classmethod
    def _bump_version(cls, s: Session, at_least: int | None = None) -> int:
        """Increase the stored version (to ``at_least`` if that is higher) in ``s``'s transaction."""
        row = s.get(Setting, VERSION_KEY, with_for_update=True)
        current = cls._read_version(s)
        new = current + 1
        if at_least is not None and at_least > new:
            new = at_least
        if row is None:
            s.add(Setting(key=VERSION_KEY, value=new))
        else:
            row.value = new
        return new

    def version(self) -> int:
        """The rule-set version: increases on every change, so peers can compare theirs."""
        return self._current().version

    # ---- reading ----------------------------------------------------------
    def rules(self) -> list[Rule]:
        """All rules, ordered by position then id (from the cache)."""
        return list(self._current().rules)

    def decide(self, dn: str, vo: str | None, group: str) -> Decision:
        """May ``dn`` (member of ``vo``) perform operations of ``group``?  Never touches the database when warm."""
        if group not in _GROUPS:
            raise ValueError(f"unknown operation group {group!r}: use one of {sorted(_GROUPS)}")
        if not dn:
            return Decision(False, None, f"{group} needs an authenticated caller; log in first")
        if dn in self.admins:
            return Decision(True, None, f"{group} allowed: this DN is a bootstrap administrator in the configuration")
        first_allow: Rule | None = None
        for rule in self._current().by_group[group]:
            if not rule.matches(dn, vo):
                continue
            if rule.effect == Effect.DENY:
                return Decision(False, rule, f"denied by ACL rule {rule.id} ({rule.describe()})")
            if first_allow is None:
                first_allow = rule
        if first_allow is not None:
            return Decision(True, first_allow, f"allowed by ACL rule {first_allow.id} ({first_allow.describe()})")
        if group in self.default_allow:
            return Decision(True, None, f"{group} is allowed to every authenticated user by default (no ACL rule matched)")
        return Decision(False, None, f"no ACL rule allows {group} for this DN; ask an administrator to add one")

    def is_admin(self, dn: str, vo: str | None) -> bool:
        return self.decide(dn, vo, Group.ADMIN).allowed

    # ---- changing ---------------------------------------------------------
    def add(
        self,
        effect: str,
        group: str,
        match: str,
        value: str,
        *,
        created_by: str,
        position: int | None = None,
    ) -> Rule:
        """Store a new rule; ``position=None`` puts it after the last one."""
        f = _validate(effect, group, match, value, created_by, position=position)
        with self._write_lock:
            try:
                with self.db.session() as s:
                    pos = f.position
                    if pos is None:
                        last = s.scalar(select(func.max(AclRule.position)))
                        pos = 0 if last is None else last + 1
                    row = AclRule(
                        position=pos,
                        effect=f.effect,
                        group=f.group,
                        match=f.match,
                        value=f.value,
                        created_by=f.created_by,
                        created_at=time.time(),
                    )
                    s.add(row)
                    s.flush()
                    rule = Rule.from_row(row)
                    version = self._bump_version(s)
            finally:
                self.invalidate()
        log.info("ACL rule %d added by %s: %s (version %d)", rule.id, rule.created_by, rule.describe(), version)
        return rule

    def remove(self, rule_id: int) -> Rule:
        """Delete one rule and return it as it was."""
        with self._write_lock:
            try:
                with self.db.session() as s:
                    row = s.get(AclRule, rule_id) if INT_MIN <= rule_id <= INT_MAX else None  # wider: no such row
                    if row is None:
                        raise NotFound(f"no ACL rule with id {rule_id}; list the rules to see their ids", rule_id=rule_id)
                    rule = Rule.from_row(row)
                    s.delete(row)
                    version = self._bump_version(s)
            finally:
                self.invalidate()
        log.info("ACL rule %d removed: %s (version %d)", rule.id, rule.describe(), version)
        return rule

    def replace_all(self, rules: list[dict[str, Any]], *, version: int | None = None) -> None:
        """Replace the whole rule set in one transaction (replication from another peer).

        Every entry is validated first; any bad entry raises BadRequest and
        changes nothing.  Entries take the keys of :meth:`Rule.to_dict`;
        ``id``, ``position``, ``created_by`` and ``created_at`` are optional
        (ids are kept when given, so "rule 3" means the same rule on every
        peer; positions default to the list order).  ``version``, if given
        (the sender's version), is adopted when it is higher than ours + 1,
        so replicas converge on the sender's number; the version increases
        in any case.
        """
        if not isinstance(rules, list):
            raise BadRequest(f"the rule set must be a list of rules, not {type(rules).__name__}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise BadRequest(f"version must be an integer, not {version!r}")
        checked: list[_Fields] = []
        seen_ids: set[int] = set()
        for i, entry in enumerate(rules):
            where = f"rule #{i + 1}: "
            if not isinstance(entry, dict):
                raise BadRequest(f"{where}must be an object, not {type(entry).__name__}")
            extra = set(entry) - _RULE_KEYS
            if extra:
                raise BadRequest(f"{where}unknown fields {sorted(extra)}; allowed: {sorted(_RULE_KEYS)}")
            missing = {"effect", "group", "match"} - set(entry)
            if missing:
                raise BadRequest(f"{where}missing fields {sorted(missing)}")
            f = _validate(
                entry["effect"],
                entry["group"],
                entry["match"],
                entry.get("value", ""),
                entry.get("created_by", ""),
                position=entry.get("position"),
                rule_id=entry.get("id"),
                created_at=entry.get("created_at"),
                where=where,
            )
            if f.id is not None:
                if f.id in seen_ids:
                    raise BadRequest(f"{where}id {f.id} appears twice in the rule set")
                seen_ids.add(f.id)
            checked.append(f)
        now = time.time()
        with self._write_lock:
            try:
                with self.db.session() as s:
                    s.execute(delete(AclRule))
                    rows = [
                        AclRule(
                            id=f.id,
                            position=i if f.position is None else f.position,
                            effect=f.effect,
                            group=f.group,
                            match=f.match,
                            value=f.value,
                            created_by=f.created_by,
                            created_at=now if f.created_at is None else f.created_at,
                        )
                        for i, f in enumerate(checked)
                    ]
                    # Rows that keep their id first, so a fresh id can't take one of theirs.
                    s.add_all([r for r in rows if r.id is not None])
                    s.flush()
                    s.add_all([r for r in rows if r.id is None])
                    new_version = self._bump_version(s, at_least=version)
            finally:
                self.invalidate()
        log.info("ACL rule set replaced: %d rules (version %d)", len(checked), new_version)
