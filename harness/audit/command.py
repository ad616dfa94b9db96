"""``harness audit``: check the input, import the user's code once, run the hazards, report.

Responsibility: the command's sequence. Bad input stops it before any service
starts (exit 2); the hazards run as ``pytest --pyargs harness.audit.suite`` in a
child process (so the plugin's cleanup and Ctrl-C handling apply), and the table is
read back from the results.json that run wrote.

Exit status: 0 no hazard reproduced (or only accepted ones), 1 a hazard reproduced,
2 bad input, 3 a hazard could not be run (HARNESS_ERROR).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from harness import results
from harness.audit import config as audit_config
from harness.audit import preflight, report
from harness.audit.config import HAZARDS
from harness.errors import ConfigError, HarnessError


def add_parser(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser(
        "audit", help="run your own engine and task setup through every hazard",
        description="Run your engine (or session factory) and your way of running "
                    "coroutines in tasks through each hazard the scenarios explain, in a real "
                    "prefork worker. Options override [tool.harness.audit] in the project's "
                    "pyproject.toml.",
        epilog="Exit codes: 0 nothing reproduced (or only accepted hazards), 1 a hazard "
               "reproduced, 2 bad input, 3 a hazard could not be run.")
    audit.add_argument("--project", type=Path, default=Path("."),
                       help="the folder with your pyproject.toml (default: here)")
    audit.add_argument("--engine", help="import path of your AsyncEngine, async_sessionmaker, "
                       "or a function returning one (myapp.db:engine)")
    audit.add_argument("--url-env", help="the variable your code reads its database URL from "
                       "(default DATABASE_URL)")
    audit.add_argument("--run", help="how your tasks run a coroutine: asyncio.run, "
                       "loop-per-process, or an import path (myapp.tasks:run_async)")
    audit.add_argument("--celery-app", help="your Celery app (myapp.worker:app): its time "
                       "limits, acks and retry policy are taken over")
    audit.add_argument("--retry-on", nargs="+", metavar="CLASS",
                       help="exception classes your tasks retry on (dotted paths)")
    audit.add_argument("--pgbouncer", action=argparse.BooleanOptionalAction, default=None,
                       help="you deploy behind PgBouncer in transaction mode")
    audit.add_argument("--hazard", nargs="+", dest="hazards", metavar="NAME",
                       help=f"run only these hazards ({', '.join(HAZARDS)})")
    audit.add_argument("--accept", nargs="+", metavar="NAME",
                       help="hazards that may reproduce without failing the audit")
    audit.add_argument("--backend", choices=("local", "docker", "auto"),
                       help="where the services run (default: the plugin's, auto)")
    audit.add_argument("-n", "--workers", type=int, default=2,
                       help="hazards run at once (pytest-xdist processes; default 2)")
    audit.add_argument("--out", type=Path, help="results folder (default: "
                       "<project>/reports/audit)")
    audit.add_argument("--fixes-from", type=Path, metavar="RESULTS_JSON",
                       help="a results.json of 'pytest scenarios/' on the same versions: the "
                            "report names the fixes it observed clean (default: the latest "
                            "one of the harness's checkout, when it runs from one)")


def load_config(args: argparse.Namespace) -> audit_config.AuditConfig:
    """The checked input, with what the user's modules turned out to be (no service yet)."""
    project = args.project.resolve()
    if not project.is_dir():
        raise ConfigError(f"--project {args.project} is not a folder; give the folder that "
                          f"holds your pyproject.toml.")
    options = {"engine": args.engine, "url_env": args.url_env, "run": args.run,
               "celery_app": args.celery_app, "retry_on": args.retry_on,
               "pgbouncer": args.pgbouncer, "hazards": args.hazards, "accept": args.accept}
    found = audit_config.build(project, audit_config.read_pyproject(project), options)
    return preflight.check(found)


def checkout_results() -> dict | None:
    """The latest ``pytest scenarios/`` results of the harness's own checkout, if the
    harness runs from one (an editable install) and that run wrote any."""
    latest = Path(__file__).resolve().parents[2] / "reports" / "latest" / "results.json"
    if not latest.exists():
        return None
    try:
        document = results.load(latest)
    except HarnessError:
        return None
    return document if any(r["scenario"] != "audit" for r in document["results"]) else None


def audit_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
        scenarios_doc = results.load(args.fixes_from) if args.fixes_from \
            else checkout_results()
    except HarnessError as exc:
        print(f"harness audit: {exc}", file=sys.stderr)
        return 2
    out = (args.out or Path(config.project_dir) / "reports" / "audit").resolve()
    argv = [sys.executable, "-m", "pytest", "--pyargs", "harness.audit.suite",
            "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", config.project_dir,
            "--results-dir", str(out), "-q", "-n", str(max(1, args.workers))]
    if args.backend:
        argv += ["--backend", args.backend]
    env = {**os.environ, audit_config.CONFIG_ENV: config.to_json()}
    print(f"harness audit: {config.engine} ({config.kind}, {config.driver}), run with "
          f"{config.run}; hazards: {', '.join(config.hazards)}", file=sys.stderr)
    code = subprocess.run(argv, env=env, cwd=config.project_dir, check=False).returncode
    latest = out / "latest" / "results.json"
    if not latest.exists():
        print(f"harness audit: the hazards' run exited {code} without writing {latest}; "
              f"its output above says why.", file=sys.stderr)
        return report.EXIT_UNTRUSTED
    document = results.load(latest)
    print()
    print(report.render(document, config.accept, scenarios_doc))
    print(f"\nresults: {latest}")
    return report.exit_status(document, config.accept)
