"""detached-instance: reading an ORM instance after its session closed.

Symptom
    A Celery task loads a ``User`` in ``async with session:`` / ``async with
    session.begin():``, and reads ``user.name`` or ``user.addresses`` after the
    session closed (to build its return value, say). Every call fails with
    ``sqlalchemy.orm.exc.DetachedInstanceError: Instance <User at 0x...> is not
    bound to a Session; attribute refresh operation cannot proceed``.

Cause
    The commit expires every loaded attribute (``expire_on_commit=True``, the
    default) and closing the session detaches the instance. Reading an expired
    attribute needs a refresh, and a refresh needs a session: with none,
    ``orm/loading.py`` ``_load_scalar_attributes`` raises
    ``DetachedInstanceError`` (code ``bhk3``). A relationship that was never
    loaded fails the same way from its lazy loader (``orm/strategies.py``
    ``LazyLoader._load_for_state``: "Parent instance ... lazy load operation of
    attribute 'addresses' cannot proceed"), whatever ``expire_on_commit`` says.
    While the session is still open the refresh is attempted, and in async code
    that is implicit IO outside SQLAlchemy's greenlet: ``MissingGreenlet``.

The article's claim
    "DetachedInstanceError: Instance <User> is not bound to a Session" when an
    "ORM instance [is] accessed outside the async with session: block (lazy
    relationship traversal after session close)"; fix: "Set
    expire_on_commit=False and load all needed attributes/relationships before
    the session closes."

What really happens (SQLAlchemy 2.1.9, asyncpg 0.32.0, psycopg 3.3.9, Celery
5.7.0, Python 3.11.7, PostgreSQL 15; NullPool, ``asyncio.run()`` per task,
PgBouncer not used; identical on both drivers)
    * ``expired-read-after-close`` (default ``expire_on_commit``, relationship
      eager-loaded with ``selectinload``): REPRODUCED, every call, with the
      article's text ("attribute refresh operation cannot proceed"). The claim
      holds.
    * ``expire-on-commit-false`` (the article's fix: ``expire_on_commit=False``
      plus ``selectinload``): CLEAN.
    * ``unloaded-relationship-after-close`` (``expire_on_commit=False`` but the
      relationship left lazy): REPRODUCED with the lazy-load form of the error.
      This is the article's own cause ("lazy relationship traversal"), and
      ``expire_on_commit=False`` alone does not fix it; the second half of the
      fix (load the relationship before close) does.
    * ``expired-read-in-session`` (the same read after the commit, before the
      session closes): REPRODUCED with ``MissingGreenlet``, not
      ``DetachedInstanceError``: the instance is still attached, so SQLAlchemy
      tries the refresh, on a new connection (NullPool), from outside the
      greenlet. The worker logs "coroutine 'connect' was never awaited"
      (``'AsyncConnection.connect'`` on psycopg) once per process.
    * ``awaitable-attrs-after-close``: ``await user.awaitable_attrs.name`` does
      not help once the session is closed: REPRODUCED, ``DetachedInstanceError``.
    * ``read-in-transaction`` (control: the same read before the commit): CLEAN.
    In every failing variant the task's audit row was committed before the
    failing read (``db.audit_rows`` = 8): Celery reports the task failed
    although its work is done, and a retry would do it again. No session is
    left open.

Which fix works and why
    ``expire_on_commit=False`` keeps the loaded values on the instance after the
    commit, and an eager loader (``selectinload``) loads the relationship while
    IO is still awaited; together nothing needs a session afterwards. Simpler
    still, compute the task's result inside the transaction, or return plain
    values (ids, dicts) instead of ORM instances.

Sources
    SQLAlchemy docs: error page https://sqlalche.me/e/21/bhk3 (DetachedInstanceError),
    "Session.commit" / ``expire_on_commit`` and the asyncio extension's "Preventing
    Implicit IO when Using AsyncSession"; sqlalchemy/sqlalchemy discussion #6251;
    SQLAlchemy source: ``orm/loading.py``, ``orm/strategies.py``.
"""

from harness import signatures as sig
from harness.plugin import assert_expected
from harness.runner import VariantRun
from harness.scenario import Claim, Role, Scenario, Variant, Workload, clean, reproduces
from scenarios.apps.orm_models import AUDIT_ROWS_SQL, SETUP_SQL

# Reads happen after the session closed unless a variant says otherwise (read_at).
AFTER_CLOSE = {"read_at": "after-close"}
EAGER = {"loader": "selectin"}
DETACHED = reproduces("detached-instance")

SCENARIO = Scenario(
    id="detached-instance",
    app="scenarios.apps.orm_reads",
    # Every call takes the same path, so 8 calls over 2 processes suffice.
    workload=Workload(task="read_user", calls=8, concurrency=2, timeout_s=60.0),
    signatures=(sig.DETACHED_INSTANCE, sig.MISSING_GREENLET),
    claim=Claim(
        error="DetachedInstanceError: Instance <User> is not bound to a Session",
        fix="Set expire_on_commit=False and load all needed attributes/relationships before "
            "the session closes.",
        signature="detached-instance", bad="expired-read-after-close",
        fixed="expire-on-commit-false"),
    setup_sql=SETUP_SQL,
    inspect_sql={"audit_rows": AUDIT_ROWS_SQL},
    variants=(
        Variant("expired-read-after-close", Role.BAD, {**EAGER, **AFTER_CLOSE},
                expect=DETACHED),
        Variant("expired-read-in-session", Role.BAD, {**EAGER, "read_at": "in-session"},
                expect=reproduces("missing-greenlet")),
        Variant("unloaded-relationship-after-close", Role.PARTIAL_FIX,
                {"expire_on_commit": False, **AFTER_CLOSE}, expect=DETACHED),
        Variant("expire-on-commit-false", Role.ARTICLE_FIX,
                {**EAGER, "expire_on_commit": False, **AFTER_CLOSE}, expect=clean()),
        Variant("awaitable-attrs-after-close", Role.BAD,
                {**EAGER, "access": "awaitable_attrs", **AFTER_CLOSE}, expect=DETACHED),
        Variant("read-in-transaction", Role.CONTROL, {**EAGER, "read_at": "in-transaction"},
                expect=clean()),
    ),
)


def test_variant(variant_run: VariantRun) -> None:
    assert_expected(variant_run)
