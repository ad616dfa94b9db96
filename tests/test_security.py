"""No secret leaks: generated passwords never appear in logs, results or reports."""

from __future__ import annotations

import json
from pathlib import Path

from harness import results
from harness.runner import run_variant
from harness.scenario import Claim, Role, Scenario, StackSpec, Variant, Workload, clean
from harness.stack import StackPool

ROOT = Path(__file__).resolve().parent.parent

SCENARIO = Scenario(
    id="secrets", app="tests.apps.lifecycle",
    workload=Workload(task="raise_wrapped", calls=2, concurrency=1),
    signatures=(), claim=Claim("-", "-", None, "via-pgbouncer", "via-pgbouncer"),
    stack=StackSpec(pgbouncer=True),
    variants=(Variant("via-pgbouncer", Role.CONTROL, {}, expect=clean()),),
    drivers=("asyncpg",))


def test_passwords_appear_in_no_log_result_or_report(tmp_path: Path):
    pool = StackPool()
    try:
        run = run_variant(SCENARIO, SCENARIO.variants[0], "asyncpg", stacks=pool,
                          logs_dir=tmp_path / "logs", project_root=ROOT)
        stack = pool.get(SCENARIO.stack)
        secrets = {stack.postgres.password, stack.redis.password}
        assert run.log_path and Path(run.log_path).read_text(), "the worker log must exist"
        assert run.counts.total == 2, run.reason  # the workload really ran (and failed)
        doc = results.build_document([run.to_result()], pool.versions(), "run")
        results.write(doc, tmp_path / "reports")
    finally:
        pool.close()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 2
    for path in written:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a generated password leaked into {path}"
    assert all(s not in json.dumps(doc) for s in secrets)


def test_services_refuse_a_client_without_the_generated_password():
    """The password is real authentication, not decoration: PostgreSQL (directly and
    through PgBouncer) and Redis refuse the right user with a wrong password."""
    import asyncio

    import asyncpg
    import redis

    pool = StackPool()
    try:
        stack = pool.get(SCENARIO.stack)
        pg, bouncer = stack.postgres, stack.pgbouncer

        async def connect(port: int, password: str) -> None:
            conn = await asyncpg.connect(host="127.0.0.1", port=port, user=pg.user,
                                         password=password, database="postgres", timeout=10)
            await conn.close()

        for port in (pg.port, bouncer.port):
            asyncio.run(connect(port, pg.password))  # the generated password works
            try:
                asyncio.run(connect(port, pg.password + "x"))
            except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError,
                    asyncpg.PostgresError):
                pass
            else:
                raise AssertionError(f"port {port} accepted a wrong password")
        client = redis.Redis(host="127.0.0.1", port=stack.redis.port, password="wrong",
                             socket_timeout=10)
        try:
            client.ping()
        except redis.AuthenticationError:
            pass
        else:
            raise AssertionError("Redis accepted a wrong password")
        finally:
            client.close()
        assert redis.Redis(host="127.0.0.1", port=stack.redis.port,
                           password=stack.redis.password, socket_timeout=10).ping()
    finally:
        pool.close()
