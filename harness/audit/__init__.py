"""``harness audit``: run a user's own engine and task setup through every hazard.

The scenarios answer questions about small, isolated configurations. The audit runs
the user's code instead: a real prefork worker imports their modules where their own
worker would (so an engine built at import is built before the fork), and a probe
task uses their engine or session factory through their way of running a coroutine.
Each hazard is the workload of the scenario that explains it.

Modules:
    config     what to audit: ``[tool.harness.audit]`` and options, checked at once
    preflight  import the user's modules in a subprocess and say what they are
    hazards    the hazards, as variants of one scenario the plugin runs
    probe_app  the Celery app the worker runs: the user's code behind a probe task
    report     the audit's table, and its exit status
    suite      the pytest module (``pytest --pyargs harness.audit.suite``)
    command    ``harness audit``
"""
