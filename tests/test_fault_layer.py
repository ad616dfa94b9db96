"""The fault layer: each fault really happens, seen from outside, and is healed.

Real services and processes only: a PostgreSQL whose sessions really end and
which really restarts, a PgBouncer whose admin console really pauses a database,
pool processes that really stop (state ``T``) and die, and a Celery worker whose
task really waits at a cue until its fault fired.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import psycopg
import pytest

from harness import procinfo
from harness._process import wait_for
from harness.faults import actions
from harness.faults.actions import Target
from harness.faults.injector import FaultInjector
from harness.faults.plan import Fault, after_calls, at_point
from harness.outcome import CallStatus
from harness.services import LocalPgBouncer, LocalPostgres, PgBouncerSettings
from harness.services.base import remove_tree
from tests._runs import (
    assert_nothing_left,
    finish,
    log_tail,
    private_run_env,
    run_processes,
    start_pytest,
)


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    with LocalPostgres() as pg:
        yield pg


@pytest.fixture(scope="module")
def pgbouncer(postgres: LocalPostgres) -> Iterator[LocalPgBouncer]:
    with LocalPgBouncer(postgres, PgBouncerSettings(default_pool_size=2)) as pgb:
        yield pgb


@pytest.fixture
def database(postgres: LocalPostgres) -> Iterator[str]:
    name = f"faults_{os.urandom(4).hex()}"
    postgres.create_database(name)
    yield name
    postgres.drop_database(name)


def target(postgres: LocalPostgres, dbname: str, pgbouncer: LocalPgBouncer | None = None,
           worker_pid: int = 0) -> Target:
    stack = SimpleNamespace(postgres=postgres, pgbouncer=pgbouncer, backend="local")
    return Target(stack, dbname, worker_pid)


def session_pids(postgres: LocalPostgres, dbname: str) -> set[int]:
    return {pid for (pid,) in postgres.execute(
        f"select pid from pg_stat_activity where datname = '{dbname}'")}


def test_terminate_backends_ends_every_session_of_the_run_database(postgres, database):
    with postgres.connect(database) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        said = actions.terminate_backends(target(postgres, database))
        assert str(pid) in said and pid not in session_pids(postgres, database)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    # Healed by itself: new sessions are accepted.
    assert postgres.execute("select 1", database) == [(1,)]


@pytest.mark.parametrize("action", ["restart-postgres", "restart-postgres-immediate"])
def test_a_restart_keeps_port_and_data_and_ends_every_connection(postgres, database, action):
    # The harness's servers run with synchronous_commit=off: an immediate shutdown may
    # lose the last commits (as a crash would), so this one waits for its WAL flush.
    postgres.execute("set synchronous_commit = on; create table kept (id int)", database)
    port = postgres.port
    fire, heal = actions.FIRE_AND_HEAL[action]
    with postgres.connect(database) as conn:
        before = conn.execute("select pg_postmaster_start_time()").fetchone()[0]
        said = fire(target(postgres, database))
        assert "restarted" in said
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    heal(target(postgres, database))
    assert postgres.port == port and postgres.alive()
    after = postgres.execute("select pg_postmaster_start_time()")[0][0]
    assert after > before
    assert postgres.execute("select count(*) from kept", database) == [(0,)]


def test_pgbouncer_pause_holds_queries_until_resume(postgres, pgbouncer, database):
    """A client connected before PAUSE waits in its next query until RESUME. (A client
    that logs in during the pause did not get in even after RESUME on PgBouncer 1.18
    within its 5 s connect timeout, so the test connects first.)"""
    t = target(postgres, database, pgbouncer)
    fire, heal = actions.FIRE_AND_HEAL["pgbouncer-pause"]
    answered = threading.Event()
    with psycopg.connect(postgres.conninfo(database, port=pgbouncer.port),
                         autocommit=True) as conn:
        conn.execute("select 1")
        fire(t)

        def query() -> None:
            conn.execute("select 1")
            answered.set()

        thread = threading.Thread(target=query, daemon=True)
        try:
            thread.start()
            assert not answered.wait(1.0), "a query went through a paused database"
        finally:
            heal(t)
        assert answered.wait(10.0), "the query did not go through after RESUME"
        thread.join(5)


def test_pgbouncer_kill_drops_the_client_connections(postgres, pgbouncer, database):
    t = target(postgres, database, pgbouncer)
    fire, heal = actions.FIRE_AND_HEAL["pgbouncer-kill"]
    with psycopg.connect(postgres.conninfo(database, port=pgbouncer.port),
                         autocommit=True) as conn:
        conn.execute("select 1")
        fire(t)
        try:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
        finally:
            heal(t)
    with psycopg.connect(postgres.conninfo(database, port=pgbouncer.port),
                         autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.fixture
def parent_with_children() -> Iterator[int]:
    """A real process with two children, as a prefork worker has its pool."""
    code = ("import os, time\n"
            "for _ in range(2):\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(60); os._exit(0)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    assert wait_for(lambda: len(actions.pool_processes(proc.pid)) == 2, timeout_s=10)
    yield proc.pid
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


def test_stop_child_puts_one_pool_process_in_state_t_and_the_heal_continues_it(
        parent_with_children):
    t = Target(None, "", parent_with_children)
    first = actions.pool_processes(parent_with_children)[0]
    injector = FaultInjector([Fault("stop-child", after_calls(0))], t, redis_client=None,
                             queue="unused")
    with injector:
        injector.after_calls()[0]()
        assert procinfo.stat(first).state == "T"
    # Healed on leaving, as it would be after an exception or Ctrl-C.
    assert wait_for(lambda: procinfo.stat(first).state != "T", timeout_s=5)
    record = injector.to_result()[0]
    assert record["fired"].startswith(f"pool process {first} stopped")
    assert "continued" in record["healed"] and not injector.problems()


def test_the_heal_runs_when_the_calls_end_in_an_exception(parent_with_children):
    t = Target(None, "", parent_with_children)
    first = actions.pool_processes(parent_with_children)[0]
    injector = FaultInjector([Fault("stop-child", after_calls(0))], t, redis_client=None,
                             queue="unused")
    with pytest.raises(KeyboardInterrupt), injector:
        injector.after_calls()[0]()
        raise KeyboardInterrupt
    assert procinfo.stat(first).state != "T"


def test_kill_child_kills_exactly_one_pool_process(parent_with_children):
    before = actions.pool_processes(parent_with_children)
    said = actions.kill_child(Target(None, "", parent_with_children))
    assert said == f"pool process {before[0]} killed (SIGKILL)"
    assert actions.pool_processes(parent_with_children) == before[1:]


def test_a_fault_whose_cue_never_comes_is_a_problem_not_a_pass():
    injector = FaultInjector([Fault("kill-child", after_calls(5))],
                             Target(None, "", 0), redis_client=None, queue="unused")
    with injector:
        pass  # three calls ran; the cue "after 5 calls" never came
    assert injector.problems() == [
        ("fault kill-child after 5 finished call(s), healed at the end of the variant never "
        "fired (its cue never came)")]


def test_a_fault_that_fails_to_fire_is_a_problem():
    injector = FaultInjector([Fault("pgbouncer-pause", after_calls(0))],
                             Target(SimpleNamespace(pgbouncer=None), "db", 0),
                             redis_client=None, queue="unused")
    with injector:
        injector.after_calls()[0]()
    assert "needs a stack with PgBouncer" in injector.problems()[0]


def test_a_task_waits_at_its_cue_and_the_fault_lands_there(make_worker):
    """kill-child at the point 'midway': the process that announced it is the one killed,
    its call is lost, and the other calls pass the point (the fault fires once)."""
    worker = make_worker(cue_points=("midway",), concurrency=2)
    with worker:
        injector = FaultInjector([Fault("kill-child", at_point("midway"))],
                                 Target(None, "", worker.pid),
                                 redis_client=worker.client.backend.client,
                                 queue=worker.settings.queue)
        with injector:
            calls = worker.run("tests.apps.lifecycle.reach_then_echo", calls=4, timeout_s=30)
    assert not injector.problems()
    fired = injector.to_result()[0]["fired"]
    assert fired.startswith("pool process ") and fired.endswith("killed (SIGKILL)")
    statuses = sorted(c.status.value for c in calls)
    assert statuses == [CallStatus.ERROR.value] + [CallStatus.OK.value] * 3, calls
    lost = next(c for c in calls if c.status is CallStatus.ERROR)
    assert "WorkerLostError" in lost.error.chain[0].type


def test_calls_after_faults_go_once_every_fault_fired(make_worker):
    """later=(2, settled): two more calls, sent after the kill at 'midway', both run."""
    worker = make_worker(cue_points=("midway",), concurrency=2)
    with worker:
        injector = FaultInjector([Fault("kill-child", at_point("midway"))],
                                 Target(None, "", worker.pid),
                                 redis_client=worker.client.backend.client,
                                 queue=worker.settings.queue)
        sent_before = time.time()
        with injector:
            calls = worker.run("tests.apps.lifecycle.reach_then_echo", calls=2, timeout_s=30,
                               later=(2, injector.settled))
    assert not injector.problems()
    assert [c.token.rsplit("-", 1)[1] for c in calls] == ["000", "001", "002", "003"]
    assert worker.later_sent_at is not None and worker.later_sent_at >= sent_before
    assert [c.status for c in calls[2:]] == [CallStatus.OK, CallStatus.OK], calls


def test_a_task_waiting_at_its_cue_rides_out_a_redis_restart(make_worker, redis_service):
    """The fault restarts the Redis the cue goes through: the task's wait and the
    harness's answer both reconnect, and the call finishes."""
    worker = make_worker(cue_points=("midway",), concurrency=1)
    with worker:
        stack = SimpleNamespace(redis=redis_service, backend="local")
        injector = FaultInjector([Fault("restart-redis", at_point("midway"))],
                                 Target(stack, "", worker.pid),
                                 redis_client=worker.client.backend.client,
                                 queue=worker.settings.queue)
        with injector:
            calls = worker.run("tests.apps.lifecycle.reach_then_echo", calls=1, timeout_s=30,
                               ignore_result=True)
    assert not injector.problems(), injector.problems()
    assert injector.to_result()[0]["fired"].startswith("Redis restarted")
    assert [c.status for c in calls] == [CallStatus.OK], worker.log_tail()


def test_a_point_no_fault_listens_for_does_not_wait(make_worker):
    with make_worker() as worker:
        calls = worker.run("tests.apps.lifecycle.reach_then_echo", calls=2, timeout_s=15)
    assert [c.status for c in calls] == [CallStatus.OK, CallStatus.OK]


def test_after_calls_fires_between_batches(make_worker, parent_with_children):
    """The hook for k=2 runs once two calls finished and before the third is sent."""
    seen: list[int] = []
    with make_worker() as worker:
        def hook() -> None:
            seen.append(len(worker._finished_in_log()))

        calls = worker.run("tests.apps.lifecycle.echo", calls=4, timeout_s=15,
                           after_calls={2: hook}, ignore_result=False)
    assert [c.status for c in calls] == [CallStatus.OK] * 4
    assert seen == [2]


# A pytest run whose only call meets two faults at once: its pool process stopped
# (state T) and the path to the database blackholed. Ctrl-C then arrives.
HELD_SCENARIO = textwrap.dedent('''
    from harness.faults.plan import Fault, after_calls
    from harness.plugin import assert_expected
    from harness.scenario import Claim, Role, Scenario, StackSpec, Variant, Workload, clean

    SCENARIO = Scenario(
        id="held", app="tests.apps.faults",
        workload=Workload(task="sleep_in_query", calls=1, concurrency=1, timeout_s=120,
                          faults=(Fault("proxy-blackhole", after_calls(0)),
                                  Fault("stop-child", after_calls(0)))),
        stack=StackSpec(proxy=True),
        signatures=(), claim=Claim("-", "-", None, "held", "held"),
        variants=(Variant("held", Role.CONTROL, {"sleep_s": 0}, expect=clean()),),
        drivers=("psycopg",))


    def test_variant(variant_run):
        assert_expected(variant_run)
''')


def test_ctrl_c_while_faults_hold_a_pool_process_leaves_nothing_behind(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_held.py").write_text(HELD_SCENARIO)
    output = tmp_path / "pytest.out"
    env, private_tmp, mark = private_run_env()
    run = start_pytest(["--results-dir", str(tmp_path / "results"), "test_held.py"], project,
                       env, output)
    try:
        def a_stopped_process() -> bool:
            return any((s := procinfo.stat(p.pid)) is not None and s.state == "T"
                       for p in run_processes(mark, private_tmp))

        assert wait_for(a_stopped_process, timeout_s=90), \
            f"no pool process of the run was ever stopped\n{log_tail(output)}"
        os.kill(run.pid, signal.SIGINT)
        code = finish(run, output)
        assert code != 0, log_tail(output)
        assert_nothing_left(mark, private_tmp)
    finally:
        run.kill()
        remove_tree(private_tmp)


def test_a_redis_restart_keeps_the_port_and_drops_every_key(redis_service):
    client = redis_service.client()
    client.set("queued", "call")
    port = redis_service.port
    stack = SimpleNamespace(redis=redis_service, backend="local")
    fire, heal = actions.FIRE_AND_HEAL["restart-redis"]
    said = fire(Target(stack, "", 0))
    assert said.startswith(f"Redis restarted on port {port}")
    assert heal(Target(stack, "", 0)) == "Redis answers"
    assert redis_service.port == port and redis_service.alive()
    assert redis_service.client().get("queued") is None


def test_a_persisted_redis_restart_keeps_the_keys_and_forgets_the_snapshot(redis_service):
    client = redis_service.client()
    client.set("queued", "call")
    stack = SimpleNamespace(redis=redis_service, backend="local")
    fire, _ = actions.FIRE_AND_HEAL["restart-redis-persisted"]
    said = fire(Target(stack, "", 0))
    assert "its data kept" in said, said
    assert redis_service.client().get("queued") == b"call"
    # The snapshot is gone: the next plain restart keeps nothing, as it says.
    fire, _ = actions.FIRE_AND_HEAL["restart-redis"]
    fire(Target(stack, "", 0))
    assert redis_service.client().get("queued") is None


def test_a_point_is_passing_only_when_every_fault_there_lets_the_task_go_on():
    passing = Fault("restart-redis", at_point("running", hold=False))
    holding = Fault("kill-child", at_point("running"))
    assert FaultInjector.passing_points([passing]) == ("running",)
    assert FaultInjector.passing_points([passing, holding]) == ()
    assert FaultInjector.points([passing, holding]) == ("running",)


def test_a_redis_kept_down_refuses_connections_for_that_long(redis_service):
    stack = SimpleNamespace(redis=redis_service, backend="local")
    fire, _ = actions.FIRE_AND_HEAL["restart-redis"]
    said: list[str] = []
    began = time.monotonic()
    firing = threading.Thread(target=lambda: said.append(fire(Target(stack, "", 0,
                                                                     down_s=1.5))))
    firing.start()
    refused = wait_for(lambda: not _answers(redis_service), timeout_s=5)
    firing.join(timeout=30)
    took = time.monotonic() - began
    assert refused, "Redis never stopped answering while it was kept down"
    assert took >= 1.5, f"the restart took {took:.2f} s, less than the 1.5 s it was kept down"
    assert said and "kept down 1.5 s" in said[0], said
    assert redis_service.client().ping()


def _answers(redis_service) -> bool:
    """Whether Redis accepts a TCP connection (redis-py's own client would retry a
    refused one for seconds, riding out the very outage this looks for)."""
    import socket

    try:
        socket.create_connection((redis_service.host, redis_service.port), timeout=1).close()
        return True
    except ConnectionRefusedError:
        return False


def test_broker_reset_breaks_the_worker_side_connections_only(redis_service):
    import redis

    from harness.faults.proxy import FaultProxy

    with FaultProxy(redis_service.host, redis_service.port, name="proxy-redis") as proxy:
        through = redis.Redis.from_url(redis_service.url(via=proxy), socket_timeout=5)
        direct = redis_service.client()
        assert through.ping() and direct.ping()
        stack = SimpleNamespace(redis=redis_service, backend="local")
        target = Target(stack, "", 0, broker_proxy=proxy)
        fire, heal = actions.FIRE_AND_HEAL["broker-reset"]
        said = fire(target)
        assert said.startswith("broker proxy: reset (1 connections reset)"), said
        with pytest.raises(redis.ConnectionError):
            through.ping()  # redis-py retries once on a new connection: reset as well
        assert direct.ping()
        assert heal(target) == "broker proxy: pass through"
        assert through.ping()


def test_a_time_down_is_for_the_redis_restarts_only():
    assert Fault("restart-redis", at_point("running"), down_s=5).describe().startswith(
        "restart-redis (down 5 s)")
    with pytest.raises(ValueError, match="only for restart-redis"):
        Fault("kill-child", at_point("running"), down_s=5)
    with pytest.raises(ValueError, match=">= 0"):
        Fault("restart-redis", at_point("running"), down_s=-1)


def test_a_direct_result_backend_needs_a_fault_that_goes_through_the_broker_proxy():
    from harness.scenario import Workload

    reset = Fault("broker-reset", at_point("running"), heal_after_s=1.0)
    assert Workload(task="t", faults=(reset,), result_backend_direct=True).result_backend_direct
    with pytest.raises(ValueError, match="needs a broker-\\* fault"):
        Workload(task="t", faults=(Fault("restart-redis", at_point("running")),),
                 result_backend_direct=True)


def test_each_variant_starts_on_an_empty_broker(redis_service):
    """A killed worker's kombu keys outside its queue (a held sweep mutex stops the next
    worker's sweep for 300 s: its unacknowledged messages never come back) are gone."""
    from harness.stack import Stack

    client = redis_service.client()
    client.set("unacked_mutex", "a-killed-worker", ex=300)
    client.hset("unacked", "tag", "message")
    Stack(spec=None, postgres=None, pgbouncer=None, redis=redis_service).fresh_broker()
    assert client.dbsize() == 0


def test_the_broker_inspection_counts_queued_and_unacknowledged_messages(redis_service):
    """Where a call that never ran went: still queued (kombu keeps a list per priority
    step, named queue + "\\x06\\x16" + step), taken and never acknowledged (``unacked``),
    or gone; other queues and other keys do not count."""
    from harness.runner import _inspect_broker
    from harness.stack import Stack

    stack = Stack(spec=None, postgres=None, pgbouncer=None, redis=redis_service)
    stack.fresh_broker()
    client = redis_service.client()
    client.rpush("harness.run", "m1", "m2")
    client.rpush("harness.run\x06\x163", "m3")
    client.rpush("harness.other", "not this run's")
    client.set("harness.run.lock", "not a queue")
    client.hset("unacked", mapping={"tag1": "m4", "tag2": "m5"})
    assert _inspect_broker(stack, "harness.run") == {"queued": 3, "unacked": 2}
    stack.fresh_broker()
    assert _inspect_broker(stack, "harness.run") == {"queued": 0, "unacked": 0}
