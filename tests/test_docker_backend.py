"""The docker backend: the same services as the local one, in containers, and nothing
left behind: after a run, after a failed start, after Ctrl-C/SIGTERM and after the
owning process was killed.

Skipped (with the reason) where no Docker engine answers or the images are missing:
docker/ci-setup.sh makes both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from harness.errors import ServiceStartError
from harness.services import PgBouncerSettings, PostgresSettings
from harness.services import docker as backend
from harness.services import docker_engine as engine
from harness.services.docker_container import ContainerService

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = backend.unavailable()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"docker backend: {PROBLEM}")
NEWER_PGBOUNCER = "harness-pgbouncer:1.24"


def leftovers(run_id: str) -> list[str]:
    """Containers and networks still labelled with ``run_id``."""
    label = {"label": f"{engine.LABEL_RUN}={run_id}"}
    client = engine.client()
    return ([f"container {c.name}" for c in client.containers.list(all=True, filters=label)]
            + [f"network {n.name}" for n in client.networks.list(filters=label)])


def published_ips(service: ContainerService) -> set[str]:
    ports = engine.wrapped(service._container).attrs["NetworkSettings"]["Ports"]
    return {binding["HostIp"] for bindings in ports.values() for binding in bindings or []}


def test_the_stack_answers_real_round_trips_and_leaves_nothing_behind():
    settings = PostgresSettings(max_connections=17, extra={"work_mem": "7MB"})
    with backend.DockerRedis() as redis, backend.DockerPostgres(settings) as pg, \
            backend.DockerPgBouncer(pg, PgBouncerSettings(default_pool_size=1)) as bouncer:
        assert pg.execute("show max_connections") == [("17",)]
        assert pg.execute("show work_mem") == [("7MB",)]
        assert pg.version.split(".")[0].isdigit() and bouncer.version.count(".") == 2
        assert redis.client().ping() and redis.version.startswith("7.")
        assert all(s.host == "127.0.0.1" and s.alive() and s.start_s > 0
                   for s in (redis, pg, bouncer))
        # Published on the loopback address only.
        assert {ip for s in (redis, pg, bouncer) for ip in published_ips(s)} == {"127.0.0.1"}
        # Transaction pooling with one server connection: two idle clients share it
        # (in session mode the second would wait for the first to disconnect).
        with pg.connect(port=bouncer.port) as first, pg.connect(port=bouncer.port) as second:
            assert (first.execute("select pg_backend_pid()").fetchone()
                    == second.execute("select pg_backend_pid()").fetchone())
        pg.create_database("h_docker_test")
        with pg.connect("h_docker_test", port=bouncer.port) as conn:
            assert conn.execute("select current_database()").fetchone() == ("h_docker_test",)
        pg.drop_database("h_docker_test")
    assert not any(s.alive() for s in (redis, pg, bouncer))
    assert leftovers(engine.RUN_ID) == []


def test_services_need_their_generated_passwords():
    import redis as redis_lib

    with backend.DockerRedis() as redis, backend.DockerPostgres() as pg:
        wrong = pg.conninfo().replace(pg.password, "not-the-password")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong)
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(host=redis.host, port=redis.port, password="wrong").ping()
        assert redis.password not in redis.log_tail(200) and pg.password not in pg.log_tail(200)


def test_a_failed_start_says_why_and_leaves_nothing():
    with pytest.raises(ServiceStartError) as failed:
        backend.DockerPostgres(PostgresSettings(extra={"no_such_setting": "1"})).__enter__()
    assert "stopped before it could answer" in str(failed.value)
    assert "the last attempt said: " in str(failed.value)
    assert "no_such_setting" in str(failed.value)  # the container's log tail is in the message
    assert leftovers(engine.RUN_ID) == []


def test_a_missing_image_is_a_clear_error_and_is_never_pulled(monkeypatch):
    monkeypatch.setenv("HARNESS_IMAGE_REDIS", "harness-redis:not-built")
    assert "HARNESS_IMAGE_REDIS" in (backend.unavailable() or "")
    with pytest.raises(ServiceStartError, match="docker/build.sh"):
        backend.DockerRedis().__enter__()
    assert leftovers(engine.RUN_ID) == []


def test_pgbouncer_1_18_refuses_max_prepared_statements():
    with backend.DockerPostgres() as pg:
        bouncer = backend.DockerPgBouncer(pg, PgBouncerSettings(max_prepared_statements=10))
        if bouncer.image != "harness-pgbouncer:1.18":
            pytest.skip(f"the configured PgBouncer image is {bouncer.image}")
        with pytest.raises(ServiceStartError, match="max_prepared_statements"):
            bouncer.__enter__()
    assert leftovers(engine.RUN_ID) == []


@pytest.mark.skipif(not engine.image_present(NEWER_PGBOUNCER) if PROBLEM is None else True,
                    reason=f"{NEWER_PGBOUNCER} is not built")
def test_the_pgbouncer_version_follows_the_image_setting(monkeypatch):
    monkeypatch.setenv("HARNESS_IMAGE_PGBOUNCER", NEWER_PGBOUNCER)
    assert backend.pgbouncer_version().startswith("1.24.")
    with backend.DockerPostgres() as pg, backend.DockerPgBouncer(
            pg, PgBouncerSettings(default_pool_size=1, max_prepared_statements=10)) as bouncer:
        assert bouncer.version.startswith("1.24.")
        # Protocol-level prepared statements survive transaction pooling from 1.21 on.
        with psycopg.connect(pg.conninfo(port=bouncer.port), prepare_threshold=0,
                             autocommit=True) as conn:
            for n in range(3):
                assert conn.execute("select %s::int + 1", (n,), prepare=True).fetchone() == (n + 1,)


OWNER = textwrap.dedent("""
    import sys, time
    from harness.services import docker as backend, docker_engine as engine
    redis = backend.DockerRedis().__enter__()
    print(engine.RUN_ID, flush=True)
    time.sleep(300)
""")


def test_a_killed_owner_is_swept_at_the_next_start_and_a_live_one_is_not(tmp_path: Path):
    """SIGKILL leaves no chance to clean up: the next start removes what the dead run left."""
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owners = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                               text=True, cwd=ROOT) for _ in range(2)]
    try:
        killed_run, live_run = (owner.stdout.readline().strip() for owner in owners)
        assert killed_run and live_run, "the owner processes did not start their Redis"
        owners[0].kill()
        owners[0].wait(timeout=10)
        assert leftovers(killed_run), "SIGKILL should have left the container for the sweep"
        swept = engine.sweep_orphans()
        assert any(killed_run in name for name in swept)
        assert leftovers(killed_run) == []
        assert leftovers(live_run), "a live owner's containers must not be swept"
    finally:
        for owner in owners:
            owner.terminate()  # no handler: the default action ends it without clean-up
            owner.wait(timeout=10)
        engine.sweep_orphans()
    assert leftovers(live_run) == []


HOLD = textwrap.dedent("""
    import time
    from harness.scenario import StackSpec
    from harness.services import docker_engine as engine


    def test_hold(harness_stacks):
        harness_stacks.get(StackSpec(pgbouncer=True))
        print("READY", engine.RUN_ID, flush=True)
        time.sleep(120)
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_removes_its_containers_and_network(tmp_path: Path, signum: int):
    (tmp_path / "test_hold.py").write_text(HOLD)
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "--backend", "docker",
         f"--results-dir={tmp_path / 'reports'}", "test_hold.py"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        # A shell without job control starts background jobs with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
    run_id, seen = "", []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not run_id:
            line = run.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "READY " in line:  # pytest -s prints it after the test's name
                run_id = line.split("READY ")[1].split()[0]
        assert run_id, "the run never started its stack; its output:\n" + "".join(seen)
        assert len(leftovers(run_id)) == 4  # postgres, pgbouncer, redis and the network
        run.send_signal(signum)
        run.communicate(timeout=60)
    finally:
        run.kill()
        run.wait(timeout=10)
    assert leftovers(run_id) == []


@pytest.mark.parametrize("immediate", [False, True])
def test_a_postgres_restart_keeps_the_published_port_and_the_data(immediate: bool):
    """The restart faults need the address to survive: Docker gives an ephemeral binding
    a new port on restart, so the service picks its host port itself."""
    with backend.DockerPostgres() as pg:
        pg.execute("set synchronous_commit = on; create table kept (id int)")
        port = pg.port
        before = pg.execute("select pg_postmaster_start_time()")[0][0]
        with pg.connect() as conn:
            pg.restart(immediate=immediate)
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
        assert pg.port == port
        assert pg.execute("select pg_postmaster_start_time()")[0][0] > before
        assert pg.execute("select count(*) from kept") == [(0,)]


def test_the_pgbouncer_admin_console_takes_the_fault_layer_commands():
    """KILL drops a client connection through the container's PgBouncer; RESUME lets new
    ones in: the pgbouncer-* faults work on the docker backend as on the local one."""
    with backend.DockerPostgres() as pg, backend.DockerPgBouncer(pg) as bouncer:
        pg.create_database("h_admin")
        with pg.connect("h_admin", port=bouncer.port) as conn:
            conn.execute("select 1")
            bouncer.admin("KILL h_admin")
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
        bouncer.admin("RESUME h_admin")
        with pg.connect("h_admin", port=bouncer.port) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


def test_a_redis_restart_keeps_the_published_port():
    with backend.DockerRedis() as redis:
        redis.client().set("queued", "call")
        port = redis.port
        redis.restart()
        assert redis.port == port and redis.client().get("queued") is None
