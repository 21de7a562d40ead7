"""ACL rules in the database (peer/acl.py): evaluation, validation, cache, version."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import event

from peer.acl import AclStore, Decision, Group, Match, Rule
from peer.db import Database
from peer.models import Base
from pocketgrid.errors import BadRequest, NotFound

ADMIN_DN = "/DC=org/DC=example/O=Example/CN=Boot Admin"
ALICE = "/DC=ch/DC=cern/O=CERN/OU=Users/CN=Alice"
BOB = "/DC=org/DC=example/O=Example/CN=Bob"
CAROL = "/DC=ch/DC=cern/O=CERN/OU=Users/CN=Carol"
USER_GROUPS = (Group.FILES_READ, Group.JOBS_SUBMIT, Group.JOBS_MANAGE)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'peer.db'}")
    database.create_all(Base.metadata)
    yield database
    database.dispose()


@pytest.fixture
def acl(db: Database) -> AclStore:
    return AclStore(db, admins=[ADMIN_DN])


class StatementCounter:
    """Counts SQL statements sent through an engine."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        self._engine = db.engine
        event.listen(self._engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, *_args: object) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._on_execute)


def snapshot(acl: AclStore) -> list[dict[str, object]]:
    return [r.to_dict() for r in acl.rules()]


# ---- defaults and bootstrap admins -------------------------------------------
def test_defaults_allow_user_groups_but_not_admin(acl: AclStore) -> None:
    for group in USER_GROUPS:
        d = acl.decide(ALICE, "cms", group)
        assert d.allowed and d.rule is None
        assert "by default" in d.reason
    d = acl.decide(ALICE, "cms", Group.ADMIN)
    assert not d.allowed and d.rule is None
    assert d.reason.startswith("no ACL rule allows admin for this DN")
    assert not acl.is_admin(ALICE, "cms")


def test_custom_default_allow(db: Database) -> None:
    acl = AclStore(db, default_allow={"files-read"})
    assert acl.decide(ALICE, None, "files-read").allowed
    assert not acl.decide(ALICE, None, "jobs-submit").allowed
    with pytest.raises(ValueError):
        AclStore(db, default_allow={"files-write"})


def test_unauthenticated_caller_is_denied(acl: AclStore) -> None:
    d = acl.decide("", None, Group.FILES_READ)
    assert not d.allowed


def test_unknown_group_in_decide_is_a_programming_error(acl: AclStore) -> None:
    with pytest.raises(ValueError):
        acl.decide(ALICE, None, "*")


def test_config_admin_always_allowed_even_against_deny_rules(acl: AclStore) -> None:
    acl.add("deny", "*", "any", "", created_by=ADMIN_DN)
    acl.add("deny", "admin", "dn", ADMIN_DN, created_by=ADMIN_DN)
    for group in (*USER_GROUPS, Group.ADMIN):
        d = acl.decide(ADMIN_DN, None, group)
        assert d.allowed, d.reason
        assert "bootstrap administrator" in d.reason
    assert acl.is_admin(ADMIN_DN, None)
    assert not acl.decide(ALICE, None, Group.FILES_READ).allowed


# ---- matching --------------------------------------------------------------
def test_exact_dn_deny(acl: AclStore) -> None:
    rule = acl.add("deny", "jobs-submit", "dn", BOB, created_by=ADMIN_DN)
    d = acl.decide(BOB, None, Group.JOBS_SUBMIT)
    assert d == Decision(False, rule, f"denied by ACL rule {rule.id} (deny jobs-submit dn={BOB})")
    # Other groups and other DNs (even ones containing Bob's DN) are unaffected.
    assert acl.decide(BOB, None, Group.FILES_READ).allowed
    assert acl.decide(ALICE, None, Group.JOBS_SUBMIT).allowed
    assert acl.decide(BOB + "/CN=proxy", None, Group.JOBS_SUBMIT).allowed


def test_dn_substring_deny_is_case_sensitive(acl: AclStore) -> None:
    rule = acl.add("deny", "files-read", "dn-substring", "/O=CERN/", created_by=ADMIN_DN)
    for dn in (ALICE, CAROL):
        d = acl.decide(dn, None, Group.FILES_READ)
        assert not d.allowed and d.rule == rule
    assert acl.decide(BOB, None, Group.FILES_READ).allowed
    assert acl.decide(ALICE.replace("CERN", "cern"), None, Group.FILES_READ).allowed


def test_vo_deny(acl: AclStore) -> None:
    rule = acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    d = acl.decide(ALICE, "cms", Group.JOBS_SUBMIT)
    assert not d.allowed
    assert d.reason == f"denied by ACL rule {rule.id} (deny jobs-submit vo=cms)"
    assert acl.decide(ALICE, "atlas", Group.JOBS_SUBMIT).allowed
    assert acl.decide(ALICE, None, Group.JOBS_SUBMIT).allowed


def test_deny_wins_over_earlier_and_later_allow(acl: AclStore) -> None:
    acl.add("allow", "jobs-submit", "dn", ALICE, created_by=ADMIN_DN)
    deny = acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    acl.add("allow", "jobs-submit", "any", "", created_by=ADMIN_DN)
    d = acl.decide(ALICE, "cms", Group.JOBS_SUBMIT)
    assert not d.allowed and d.rule == deny
    # Without the VO the deny does not match and the first allow is named.
    d = acl.decide(ALICE, None, Group.JOBS_SUBMIT)
    assert d.allowed and d.rule is not None and d.rule.match == Match.DN


def test_allow_rule_grants_admin(acl: AclStore) -> None:
    assert not acl.is_admin(BOB, None)
    rule = acl.add("allow", "admin", "dn", BOB, created_by=ADMIN_DN)
    d = acl.decide(BOB, None, Group.ADMIN)
    assert d.allowed and d.rule == rule
    assert d.reason == f"allowed by ACL rule {rule.id} (allow admin dn={BOB})"
    assert acl.is_admin(BOB, None)
    assert not acl.is_admin(ALICE, None)


def test_vo_allow_grants_admin(acl: AclStore) -> None:
    acl.add("allow", "admin", "vo", "ops", created_by=ADMIN_DN)
    assert acl.is_admin(ALICE, "ops")
    assert not acl.is_admin(ALICE, "cms")


def test_star_group_applies_to_every_group(acl: AclStore) -> None:
    rule = acl.add("deny", "*", "dn", BOB, created_by=ADMIN_DN)
    for group in (*USER_GROUPS, Group.ADMIN):
        d = acl.decide(BOB, None, group)
        assert not d.allowed and d.rule == rule
        assert d.reason == f"denied by ACL rule {rule.id} (deny * dn={BOB})"
    assert acl.decide(ALICE, None, Group.FILES_READ).allowed
    star_allow = acl.add("allow", "*", "vo", "ops", created_by=ADMIN_DN)
    d = acl.decide(CAROL, "ops", Group.ADMIN)
    assert d.allowed and d.rule == star_allow


def test_default_deny_is_applied_per_group_with_user_deny_any(acl: AclStore) -> None:
    acl.add("deny", "jobs-submit", "any", "", created_by=ADMIN_DN)
    acl.add("allow", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    # deny any matches everyone, and deny wins: the allow cannot punch a hole.
    assert not acl.decide(ALICE, "cms", Group.JOBS_SUBMIT).allowed
    assert acl.decide(ALICE, "cms", Group.FILES_READ).allowed


# ---- listing and ordering -----------------------------------------------------
def test_rules_are_ordered_by_position_then_id(acl: AclStore) -> None:
    a = acl.add("allow", "files-read", "any", "", created_by=ADMIN_DN)  # position 0
    b = acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)  # position 1
    c = acl.add("deny", "admin", "dn", BOB, created_by=ADMIN_DN, position=-5)
    d = acl.add("allow", "admin", "dn", ALICE, created_by=ADMIN_DN, position=1)  # ties with b: after it
    assert (a.position, b.position) == (0, 1)
    assert [r.id for r in acl.rules()] == [c.id, a.id, b.id, d.id]
    e = acl.add("allow", "jobs-manage", "any", "", created_by=ADMIN_DN)
    assert e.position == 2 and acl.rules()[-1] == e
    assert isinstance(acl.rules()[0], Rule)


def test_rule_to_dict_and_fields(acl: AclStore) -> None:
    rule = acl.add("deny", Group.JOBS_SUBMIT, Match.VO, "cms", created_by=ADMIN_DN)
    data = rule.to_dict()
    assert data == {
        "id": rule.id,
        "position": 0,
        "effect": "deny",
        "group": "jobs-submit",
        "match": "vo",
        "value": "cms",
        "created_by": ADMIN_DN,
        "created_at": rule.created_at,
    }
    assert type(data["group"]) is str and type(data["match"]) is str
    assert rule.created_at > 0
    assert acl.rules() == [rule]


# ---- validation ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("permit", "files-read", "any", ""), "unknown effect"),
        (("allow", "files-write", "any", ""), "unknown group"),
        (("allow", "files-read", "cn", "x"), "unknown match"),
        (("deny", "files-read", "dn", ""), "needs a value"),
        (("deny", "files-read", "dn-substring", "   "), "needs a value"),
        (("deny", "files-read", "vo", ""), "needs a value"),
        (("deny", "files-read", "any", "cms"), "takes no value"),
        (("deny", "files-read", "dn", "x" * 1025), "limit is 1024"),
        (("deny", "files-read", "dn", "/CN=a\n/CN=b"), "control characters"),
        (("deny", "files-read", "vo", "cms\x00"), "control characters"),
        (("deny", "files-read", "vo", 42), "must be a string"),
    ],
)
def test_invalid_rule_raises_bad_request_and_changes_nothing(acl: AclStore, args: tuple, fragment: str) -> None:
    acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    before, version = snapshot(acl), acl.version()
    with pytest.raises(BadRequest) as info:
        acl.add(*args, created_by=ADMIN_DN)
    assert fragment in info.value.message
    assert info.value.status == 400
    assert snapshot(acl) == before
    assert acl.version() == version
    acl.invalidate()
    assert snapshot(acl) == before  # nothing reached the database either


def test_invalid_created_by_or_position(acl: AclStore) -> None:
    with pytest.raises(BadRequest, match="created_by"):
        acl.add("deny", "files-read", "vo", "cms", created_by="a\tb")
    with pytest.raises(BadRequest, match="position"):
        acl.add("deny", "files-read", "vo", "cms", created_by=ADMIN_DN, position="1")  # type: ignore[arg-type]
    assert acl.rules() == []


def test_value_of_exactly_1024_characters_is_accepted(acl: AclStore) -> None:
    rule = acl.add("deny", "files-read", "dn", "x" * 1024, created_by=ADMIN_DN)
    acl.invalidate()
    assert acl.rules()[0].value == rule.value


def test_remove(acl: AclStore) -> None:
    rule = acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    assert acl.remove(rule.id) == rule
    assert acl.rules() == []


def test_remove_unknown_rule_raises_not_found(acl: AclStore) -> None:
    acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    before, version = snapshot(acl), acl.version()
    with pytest.raises(NotFound) as info:
        acl.remove(9999)
    assert "9999" in info.value.message and info.value.status == 404
    assert snapshot(acl) == before and acl.version() == version


def test_removed_ids_are_not_reused(acl: AclStore) -> None:
    first = acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    acl.remove(first.id)
    second = acl.add("deny", "jobs-submit", "vo", "atlas", created_by=ADMIN_DN)
    assert second.id != first.id


# ---- replace_all --------------------------------------------------------------
def test_replace_all_replaces_the_rule_set(acl: AclStore) -> None:
    acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    acl.replace_all(
        [
            {"id": 40, "position": 5, "effect": "allow", "group": "admin", "match": "dn", "value": BOB,
             "created_by": ADMIN_DN, "created_at": 1000.0},
            {"effect": "deny", "group": "*", "match": "dn-substring", "value": "/CN=Mallory"},
        ]
    )
    rules = acl.rules()
    assert len(rules) == 2
    assert rules[0].value == "/CN=Mallory" and rules[0].position == 1  # list order as position
    assert rules[1].to_dict() == {
        "id": 40, "position": 5, "effect": "allow", "group": "admin", "match": "dn", "value": BOB,
        "created_by": ADMIN_DN, "created_at": 1000.0,
    }
    assert acl.is_admin(BOB, None)
    assert acl.decide(ALICE, "cms", Group.JOBS_SUBMIT).allowed  # the old rule is gone


def test_replace_all_roundtrips_to_dict(acl: AclStore, db: Database) -> None:
    acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    acl.add("allow", "admin", "dn", BOB, created_by=ADMIN_DN)
    other = AclStore(Database(f"{db.url[:-len('peer.db')]}other.db"))
    other.db.create_all(Base.metadata)
    try:
        other.replace_all([r.to_dict() for r in acl.rules()], version=acl.version())
        assert other.rules() == acl.rules()
        assert other.version() >= acl.version()
    finally:
        other.db.dispose()


@pytest.mark.parametrize(
    "bad",
    [
        {"effect": "allow", "group": "admin", "match": "vo", "value": ""},
        {"effect": "allow", "group": "admin", "match": "vo", "value": "ops", "colour": "red"},
        {"effect": "allow", "group": "admin"},
        {"id": 1, "effect": "allow", "group": "admin", "match": "any", "value": ""},  # duplicate id
        {"effect": "allow", "group": "admin", "match": "any", "value": "", "id": 0},
        "allow admin any",
    ],
)
def test_replace_all_is_atomic(acl: AclStore, bad: object) -> None:
    acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    before, version = snapshot(acl), acl.version()
    good = {"id": 1, "effect": "allow", "group": "files-read", "match": "any", "value": ""}
    with pytest.raises(BadRequest) as info:
        acl.replace_all([good, bad])  # type: ignore[list-item]
    assert "rule #2" in info.value.message
    assert snapshot(acl) == before and acl.version() == version
    acl.invalidate()
    assert snapshot(acl) == before


def test_replace_all_rolls_back_on_database_error(acl: AclStore, db: Database) -> None:
    """A failure inside the transaction, after the old rules were deleted, leaves them in place."""
    acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    before, version = snapshot(acl), acl.version()
    executed: list[str] = []

    def boom(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        executed.append(statement.split()[0].upper())
        if statement.lstrip().upper().startswith("INSERT INTO ACL_RULES"):
            raise RuntimeError("disk on fire")

    event.listen(db.engine, "before_cursor_execute", boom)
    try:
        with pytest.raises(RuntimeError):
            acl.replace_all([{"effect": "allow", "group": "admin", "match": "any", "value": ""}])
    finally:
        event.remove(db.engine, "before_cursor_execute", boom)
    assert "DELETE" in executed  # the old rules had been deleted in the transaction
    assert snapshot(acl) == before and acl.version() == version


def test_replace_all_with_empty_list_clears_rules(acl: AclStore) -> None:
    acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    acl.replace_all([])
    assert acl.rules() == []
    assert acl.decide(ALICE, "cms", Group.JOBS_SUBMIT).allowed


# ---- cache ---------------------------------------------------------------------
def test_decision_flips_right_after_add_and_remove(acl: AclStore) -> None:
    assert acl.decide(BOB, None, Group.JOBS_SUBMIT).allowed  # warms the cache
    rule = acl.add("deny", "jobs-submit", "dn", BOB, created_by=ADMIN_DN)
    assert not acl.decide(BOB, None, Group.JOBS_SUBMIT).allowed
    acl.remove(rule.id)
    assert acl.decide(BOB, None, Group.JOBS_SUBMIT).allowed
    acl.replace_all([{"effect": "deny", "group": "jobs-submit", "match": "dn", "value": BOB}])
    assert not acl.decide(BOB, None, Group.JOBS_SUBMIT).allowed


def test_decide_does_not_query_the_database_when_warm(acl: AclStore, db: Database) -> None:
    acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    acl.add("allow", "admin", "dn", BOB, created_by=ADMIN_DN)
    counter = StatementCounter(db)
    try:
        acl.decide(ALICE, "cms", Group.JOBS_SUBMIT)  # cold: loads
        assert counter.count > 0
        counter.count = 0
        for _ in range(50):
            for group in Group:
                acl.decide(ALICE, "cms", group)
                acl.decide(BOB, None, group)
            acl.is_admin(BOB, None)
            acl.rules()
            acl.version()
        assert counter.count == 0
        acl.invalidate()
        acl.decide(ALICE, "cms", Group.JOBS_SUBMIT)
        assert counter.count > 0
    finally:
        counter.close()


def test_invalidate_picks_up_changes_made_elsewhere(acl: AclStore, db: Database) -> None:
    assert acl.decide(BOB, None, Group.FILES_READ).allowed
    other = AclStore(db)  # e.g. another store on the same database
    other.add("deny", "files-read", "dn", BOB, created_by=ADMIN_DN)
    assert acl.decide(BOB, None, Group.FILES_READ).allowed  # still the cached snapshot
    acl.invalidate()
    assert not acl.decide(BOB, None, Group.FILES_READ).allowed


def test_concurrent_decisions_and_changes(acl: AclStore) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                acl.decide(ALICE, "cms", Group.JOBS_SUBMIT)
                acl.rules()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            rule = acl.add("deny", "jobs-submit", "vo", f"vo{i}", created_by=ADMIN_DN)
            if i % 2:
                acl.remove(rule.id)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert len(acl.rules()) == 10
    assert acl.version() == 30


# ---- version ---------------------------------------------------------------------
def test_version_increases_on_every_change(acl: AclStore, db: Database) -> None:
    seen = [acl.version()]
    assert seen[0] == 0
    rule = acl.add("deny", "jobs-submit", "vo", "cms", created_by=ADMIN_DN)
    seen.append(acl.version())
    acl.add("allow", "admin", "dn", BOB, created_by=ADMIN_DN)
    seen.append(acl.version())
    acl.remove(rule.id)
    seen.append(acl.version())
    acl.replace_all([])
    seen.append(acl.version())
    assert seen == sorted(set(seen)) and len(seen) == 5
    # Persisted: a fresh store on the same database sees the same number.
    assert AclStore(db).version() == seen[-1]
    # Adopting a higher sender version; a lower one still increases ours.
    acl.replace_all([], version=100)
    assert acl.version() == 100
    acl.replace_all([], version=3)
    assert acl.version() == 101
