"""Each service starts, answers a real round trip, and leaves nothing behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.errors import MissingBinaryError, PortInUseError
from harness.scenario import StackSpec
from harness.services import LocalPgBouncer, LocalPostgres, LocalRedis, PostgresSettings, base
from harness.stack import StackPool


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_postgres_and_pgbouncer_answer_and_leave_nothing_behind():
    with LocalPostgres(PostgresSettings(max_connections=17)) as pg:
        with LocalPgBouncer(pg) as bouncer:
            assert pg.execute("show max_connections") == [("17",)]
            with pg.connect(port=bouncer.port) as conn:  # a query through PgBouncer
                assert conn.execute("select 41 + 1").fetchone() == (42,)
            assert bouncer.version.count(".") == 2
            pids = [pg._proc.pid, bouncer._proc.pid]
            dirs = [pg._dir, bouncer._dir]
        assert pg.version.split(".")[0].isdigit() and pg.start_s > 0
    assert not any(pid_alive(p) for p in pids)
    assert not any(d.exists() for d in dirs)


def test_postgres_needs_its_password():
    import psycopg

    with LocalPostgres() as pg:
        wrong = pg.conninfo().replace(pg.password, "not-the-password")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong)


def test_redis_answers_ping_with_its_password_only():
    import redis

    with LocalRedis() as r:
        assert r.client().ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=r.host, port=r.port, password="wrong").ping()
        pid, folder = r._proc.pid, r._dir
    assert not pid_alive(pid) and not folder.exists()


def test_services_listen_on_loopback_only():
    with LocalPostgres() as pg, LocalRedis() as r:
        assert pg.execute("show listen_addresses") == [("127.0.0.1",)]
        assert r.client().config_get("bind")["bind"] == "127.0.0.1"


def test_a_taken_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{port}: the port is taken"):
            LocalRedis(port=port).__enter__()
        with pytest.raises(PortInUseError, match="the port is taken"):
            LocalPostgres(PostgresSettings(port=port)).__enter__()


def test_a_missing_binary_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingBinaryError, match="apt-get install -y redis-server"):
        LocalRedis().__enter__()
    with pytest.raises(MissingBinaryError, match="apt-get install -y pgbouncer"):
        base.find_binary("pgbouncer", "pgbouncer")


def test_a_dead_service_is_reported_by_the_stack():
    pool = StackPool()
    try:
        stack = pool.get(StackSpec())
        assert stack.problems() == []
        stack.redis._proc.popen.kill()
        stack.redis._proc.popen.wait(timeout=10)
        [problem] = stack.problems()
        assert problem.startswith("redis is no longer running")
    finally:
        pool.close()


def test_services_die_with_the_harness_even_on_sigkill(tmp_path: Path):
    """PR_SET_PDEATHSIG: a harness killed with SIGKILL cannot clean up, the kernel does."""
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from harness.services import LocalRedis
        r = LocalRedis().__enter__()
        print(r._proc.pid, r._dir, flush=True)
        time.sleep(600)
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
    try:
        pid_text, folder = owner.stdout.readline().split()
        redis_pid = int(pid_text)
        assert pid_alive(redis_pid)
        owner.kill()
        owner.wait(timeout=10)
        deadline = time.monotonic() + 10
        while pid_alive(redis_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(redis_pid)
    finally:
        owner.kill()
        base.remove_tree(Path(folder))  # the killed owner could not remove its temp dir


def test_extra_pgbouncer_settings_replace_the_harness_lines():
    from harness.services.pgbouncer import PgBouncerSettings, pgbouncer_ini

    ini = pgbouncer_ini(
        PgBouncerSettings(extra=(("query_wait_timeout", "2"),
                                 ("ignore_startup_parameters", "extra_float_digits"))),
        server=("127.0.0.1", 5432), listen=("127.0.0.1", 6432), auth_file="/x", admin_user="u")
    lines = ini.splitlines()
    assert "query_wait_timeout = 2" in lines
    assert [line for line in lines if line.startswith("ignore_startup_parameters")] == [
        "ignore_startup_parameters = extra_float_digits"]


def test_a_pgbouncer_setting_that_is_not_one_line_is_refused():
    from harness.errors import ConfigError
    from harness.services.pgbouncer import PgBouncerSettings, pgbouncer_ini

    with pytest.raises(ConfigError, match="cannot be written to pgbouncer.ini"):
        pgbouncer_ini(PgBouncerSettings(extra=(("auth_file", "/x\nadmin_users = *"),)),
                      server=("127.0.0.1", 5432), listen=("127.0.0.1", 6432),
                      auth_file="/x", admin_user="u")


def test_an_app_role_logs_in_without_superuser_rights():
    """StackSpec(app_role=True): the app's URL names a role that is not a superuser, with
    a generated password, so PostgreSQL's reserved slots stay the harness's."""
    import psycopg
    from sqlalchemy.engine import make_url

    pool = StackPool()
    try:
        stack = pool.get(StackSpec(app_role=True))
        with stack.fresh_database("app-role") as dbname:
            url = make_url(stack.database_url("psycopg", dbname))
            assert url.username == "harness_app" and url.password != stack.postgres.password
            with psycopg.connect(host=url.host, port=url.port, user=url.username,
                                 password=url.password, dbname=dbname) as conn:
                assert conn.execute("select rolsuper from pg_roles where rolname = "
                                    "current_user").fetchone() == (False,)
        with pytest.raises(ValueError, match="direct connections"):
            StackSpec(app_role=True, pgbouncer=True)
    finally:
        pool.close()
