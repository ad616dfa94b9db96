"""Faults injected on cue into a running scenario, each with its heal.

The world around a worker fails in ways no configuration file shows: PostgreSQL
restarts, a network path stalls without closing, a pool process dies between INSERT
and COMMIT. A scenario declares such faults in its workload
(``Workload(faults=(Fault("restart-postgres", after_calls(2)),))``); the runner fires
each on its cue and heals it by the end of the variant, whatever happened.

- :mod:`harness.faults.plan`: the declarations (actions, cues, heal timing).
- :mod:`harness.faults.actions`: what each action does to real services and processes.
- :mod:`harness.faults.cues`: a task announces a point; the fault lands there.
- :mod:`harness.faults.injector`: fires, heals and records, for one variant run.
- :mod:`harness.faults.proxy`: the TCP fault proxy (latency, blackhole, reset).
"""
