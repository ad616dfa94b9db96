"""The ``harness`` command.

Responsibility: command-line entry points and their arguments.

    harness doctor                       what this machine has, what to install
    harness matrix [axes] [-k EXPR]      build the environments, run, merge, compare
    harness matrix plan --format github  the GitHub Actions include list of the plan
    harness matrix merge PATH...         merge shards' results.json into one matrix
    harness report FILE                  re-render matrix.md / matrix.html from a JSON
    harness report diff OLD NEW          cells whose outcome changed; exit 1 if any

What each matrix command does is in :mod:`harness.matrix.command`.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

from harness import environment, rules
from harness.audit import command as audit_command
from harness.bootstrap import default_workers
from harness.errors import HarnessError
from harness.matrix import bisect, command
from harness.matrix.axes import AXES
from harness.services.base import POSTGRES_BIN_DIRS, SERVICE_USER

# (binary, Debian package, version flag)
BINARIES = (("initdb", "postgresql", "--version"), ("postgres", "postgresql", "--version"),
            ("pgbouncer", "pgbouncer", "--version"), ("redis-server", "redis-server", "--version"),
            ("docker", "docker.io", "--version"))
REQUIRED = {"initdb", "postgres", "pgbouncer", "redis-server"}


def _locate(binary: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for folder in POSTGRES_BIN_DIRS:
        if (folder / binary).exists():
            return str(folder / binary)
    return None


def _version(path: str, flag: str) -> str:
    try:
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(could not run: {exc})"
    found = re.search(r"\d+\.\d+(\.\d+)?", out.stdout + out.stderr)
    return found.group(0) if found else "(version unknown)"


def doctor() -> int:
    """Print what the harness found; exit 1 when the local backend cannot run."""
    problems: list[str] = []
    print(f"python      {environment.python_version()} ({sys.executable})")
    for name, version in environment.package_versions().items():
        print(f"  {name:<14} {version}")
    libpq = environment.libpq_info()
    if libpq:
        print(f"  psycopg uses the {libpq['impl']} implementation with libpq {libpq['libpq']}")
    print("binaries")
    for binary, package, flag in BINARIES:
        path = _locate(binary)
        if path is None:
            note = "required" if binary in REQUIRED else "optional (docker backend)"
            print(f"  {binary:<14} missing ({note}; apt-get install {package})")
            if binary in REQUIRED:
                problems.append(package)
        else:
            print(f"  {binary:<14} {_version(path, flag):<10} {path}")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_USER)
            print(f"user        root: services will run as '{SERVICE_USER}'")
        except KeyError:
            print(f"user        root, and no '{SERVICE_USER}' user to run services as")
            problems.append("postgresql")
    else:
        print(f"user        {pwd.getpwuid(os.geteuid()).pw_name}: services run as this user")
    if problems:
        packages = " ".join(sorted(set(problems)))
        print(f"\nThe local backend cannot run: install the missing packages with\n"
              f"    sudo apt-get install -y {packages}\nor run "
              f"'python3 -m harness.bootstrap scenarios' as root, which installs them.")
        return 1
    print("\nThe local backend can run: pytest scenarios/")
    return 0


def _axis_parent(suppress: bool = False) -> argparse.ArgumentParser:
    """The axis options. ``suppress``: no defaults, for a sub-action (``plan``): argparse
    copies every attribute a sub-parser sets over the parent's, so a default there would
    erase an option written before the action (``harness matrix --python 3.11 plan``)."""
    parent = argparse.ArgumentParser(add_help=False,
                                     argument_default=argparse.SUPPRESS if suppress else None)
    group = parent.add_argument_group("axes (each overrides that axis of matrix.toml)")
    for axis in AXES:
        if axis == "pgbouncer":
            text = ("PgBouncer versions: X.Y or local (the installed binary). The local "
                    "binary's line runs on the local backend; any other needs the docker "
                    "image harness-pgbouncer:X.Y (bash docker/build.sh makes 1.18 and 1.24; "
                    "HARNESS_SUITES=forky adds 1.26)")
        elif axis == "postgres":
            text = ("PostgreSQL majors, or local (the installed binary); optional. The "
                    "local major runs on the local backend; any other needs the docker "
                    "image harness-postgres:N (docker/build.sh makes 15 and 17; "
                    "HARNESS_SUITES=forky adds 18)")
        else:
            text = (f"{axis} versions: exact, X.Y.x (latest of a line) or latest"
                    + ("; the first is the baseline's; a line with no interpreter here "
                       "runs in the image harness-python:X.Y (a container environment)"
                       if axis == "python" else ""))
        group.add_argument(f"--{axis}", nargs="+", metavar="VERSION", help=text)
    parent.add_argument("--matrix-file", type=Path, metavar="FILE",
                        help="the axes file (default: matrix.toml in the project root)")
    parent.add_argument("--full", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="every combination (cross product) instead of the baseline plus "
                             "one axis at a time; large: see matrix.toml")
    parent.add_argument("--pairwise", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="the fewest environments in which every pair of values of any "
                             "two axes meets (pairs the package index says cannot be "
                             "installed are left out and named)")
    return parent


# Options of the run itself (dest -> option), which 'plan' and 'merge' do not use.
RUN_OPTIONS = {"keyword": "-k", "only": "--only", "cache_dir": "--cache-dir",
               "workers": "--workers", "env_timeout": "--env-timeout", "resolve": "--resolve",
               "audit": "--audit"}


def _refuse_unused(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options given for ``harness matrix`` that its ``plan``/``merge`` action would ignore.

    Raises:
        HarnessError: one of them was given; the message says which and where they belong.
    """
    matrix = parser._subparsers._group_actions[0].choices["matrix"]
    unused = [flag for dest, flag in RUN_OPTIONS.items()
              if getattr(args, dest, None) != matrix.get_default(dest)]
    if args.action == "plan":
        unused += [flag for dest, flag in (("out", "--out"), ("baseline", "--baseline"))
                   if getattr(args, dest, None) != matrix.get_default(dest)]
    else:
        unused += ["--carry/--no-carry"] * (args.carry is not None)
        unused += [f"--{axis}" for axis in AXES if getattr(args, axis, None)]
        unused += ["--matrix-file"] * bool(args.matrix_file) + ["--full"] * bool(args.full)
        unused += ["--pairwise"] * bool(args.pairwise)
    if unused:
        raise HarnessError(
            f"'harness matrix {args.action}' does not use {', '.join(unused)}, so it would "
            f"silently ignore {'it' if len(unused) == 1 else 'them'}. Drop "
            f"{'it' if len(unused) == 1 else 'them'}, or run 'harness matrix' without "
            f"'{args.action}' to build and run the environments with them.")


BENCHES = ("fixes", "overhead", "suite", "repeat", "envs")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", description="Celery prefork + async SQLAlchemy fault-reproduction "
        "harness: check this machine, build and compare compatibility matrices.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="report binaries, versions and what is missing")
    axes_parent = _axis_parent()
    matrix = sub.add_parser(
        "matrix", parents=[axes_parent], help="build, run and merge the compatibility matrix",
        epilog="Arguments after -- go to pytest in every environment. Exit codes: 0 done, "
               "1 a cell changed against --baseline, 2 bad input, 3 an environment failed.")
    matrix.add_argument("-k", dest="keyword", metavar="EXPR",
                        help="run only the scenario tests pytest -k EXPR selects")
    matrix.add_argument("--only", nargs="+", default=(), metavar="ENV_ID",
                        help="run only these environments of the plan (one CI shard)")
    matrix.add_argument("--out", type=Path, default=Path("reports/matrix"),
                        help="output folder (default: reports/matrix)")
    matrix.add_argument("--cache-dir", type=Path, help="environment cache (default: "
                        "$HARNESS_CACHE_DIR/envs or ~/.cache/celery-async-sa-harness/envs)")
    matrix.add_argument("-n", "--workers", type=int, default=default_workers(),
                        help="pytest-xdist processes per environment (default: twice the "
                             f"CPUs, at most 8: {default_workers()} here)")
    matrix.add_argument("--baseline", type=Path, metavar="FILE",
                        help="a matrix.json or results.json to compare with; exit 1 when a "
                             "cell's outcome changed")
    matrix.add_argument("--audit", type=Path, nargs="?", const=Path("."), metavar="PROJECT",
                        help="run 'harness audit' of PROJECT (default: here; its "
                             "pyproject.toml's [tool.harness.audit]) in every environment "
                             "instead of the scenarios")
    matrix.add_argument("--carry", choices=("axes", "strict", "off"), default=None,
                        help="which cells an environment takes from another that ran them "
                             "instead of running them: 'axes' (cells that depend on no axis "
                             "in which the two differ; the default), 'strict' (also only on "
                             "the same backend and host) or 'off'; default: matrix.toml's "
                             "carry, else axes")
    matrix.add_argument("--no-carry", dest="carry", action="store_const", const="off",
                        help="run every cell in every environment (= --carry off)")
    matrix.add_argument("--env-timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="bound on one environment's scenario run (default: 3600)")
    actions = matrix.add_subparsers(dest="action")
    matrix.add_argument("--resolve", choices=("dated", "latest"), default="dated",
                        help="how an environment resolves what it does not pin: 'dated' (as "
                             "it could be installed when its newest pinned release came out; "
                             "the default) or 'latest' (today's)")
    plan = actions.add_parser("plan", parents=[_axis_parent(suppress=True)],
                              help="print the environments")
    plan.add_argument("--format", choices=("text", "github"), default="text")
    # No default here: --carry may stand before 'plan' too (see parse()).
    plan.add_argument("--carry", choices=("axes", "strict", "off"), default=argparse.SUPPRESS)
    plan.add_argument("--no-carry", dest="carry", action="store_const", const="off",
                      default=argparse.SUPPRESS)
    plan.add_argument("--check", action="store_true",
                      help="resolve and check every version on the package index first")
    merge = actions.add_parser("merge", help="merge results.json files or folders")
    merge.add_argument("paths", nargs="+", type=Path)
    # No defaults here: --out and --baseline may stand before 'merge' too (see _axis_parent).
    merge.add_argument("--out", type=Path, default=argparse.SUPPRESS)
    merge.add_argument("--baseline", type=Path, metavar="FILE", default=argparse.SUPPRESS)
    audit_command.add_parser(sub)
    rules.add_parser(sub)
    bisect.add_parser(sub)
    bench = sub.add_parser(
        "bench", help="measure: fixes (the price of each working fix), overhead, suite, "
        "repeat N (determinism), envs (a matrix environment's build and smoke check, cold "
        "and warm); figures go to reports/bench/<name>.json",
        epilog="Further arguments go to the bench script (see bench/<name>.py).")
    bench.add_argument("name", choices=BENCHES)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    report = sub.add_parser(
        "report", help="re-render Markdown/HTML from a results or matrix JSON, or diff two",
        usage="harness report FILE [--out DIR]\n       harness report diff OLD NEW")
    report.add_argument("paths", nargs="+", type=Path, metavar="FILE", help=argparse.SUPPRESS)
    report.add_argument("--out", type=Path, help="folder for matrix.md and matrix.html "
                        "(default: the folder of FILE)")
    return parser


def project_root(start: Path | None = None) -> Path:
    """The checkout to test: the nearest folder up from here with scenarios/ and pyproject.toml.

    Raises:
        HarnessError: run from outside a checkout of the project.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "scenarios").is_dir() and (folder / "pyproject.toml").exists():
            return folder
    raise HarnessError(f"{here} is not inside a checkout of the harness (no folder above it "
                       f"has scenarios/ and pyproject.toml). cd into the checkout first.")


def run_bench(root: Path, name: str, bench_args: list[str]) -> int:
    """Run ``bench/<name>.py`` of the checkout with this interpreter, from its root."""
    if not (root / "bench" / f"{name}.py").exists():
        raise HarnessError(f"{root / 'bench' / (name + '.py')} is missing: the bench scripts "
                           f"live in the project checkout; run this from a full clone.")
    return subprocess.run([sys.executable, "-m", f"bench.{name}", *bench_args], cwd=root,
                          check=False).returncode


def _run(args: argparse.Namespace, pytest_extra: list[str]) -> int:
    if args.command == "matrix" and args.action:
        _refuse_unused(_parser(), args)
        if pytest_extra:
            raise HarnessError(f"'harness matrix {args.action}' runs no pytest, so the "
                               f"arguments after -- ({' '.join(pytest_extra)}) would be "
                               f"ignored. Drop them.")
    root = project_root()
    if args.command == "bench":
        return run_bench(root, args.name, args.bench_args + pytest_extra)
    if args.command == "rules":
        return rules.rules_command(root, args)
    if args.command == "bisect":
        return bisect.bisect_command(root, args, pytest_extra)
    axes = {axis: getattr(args, axis, None) for axis in AXES}
    if args.command == "report":
        if str(args.paths[0]) == "diff":
            if len(args.paths) != 3:
                raise HarnessError("Usage: harness report diff OLD NEW (two JSON files: a "
                                   "matrix.json or results.json each).")
            return command.diff_command(args.paths[1], args.paths[2])
        if len(args.paths) != 1:
            raise HarnessError("Usage: harness report FILE: one results.json or matrix.json.")
        return command.report_command(args.paths[0], args.out)
    if args.action == "plan":
        return command.plan_command(root, args.matrix_file, axes, args.full, args.format,
                                    args.check, args.pairwise, args.carry)
    if args.action == "merge":
        return command.merge_command(args.paths, args.out, args.baseline)
    pytest_args = (["-k", args.keyword] if args.keyword else []) + pytest_extra
    audit = None
    if args.audit is not None:
        if args.keyword:
            raise HarnessError("-k selects scenario tests; with --audit, choose hazards in "
                               "[tool.harness.audit] (hazards = [...]) instead.")
        audit = audit_command.load_config(argparse.Namespace(
            project=args.audit, engine=None, url_env=None, run=None, celery_app=None,
            retry_on=None, pgbouncer=None, hazards=None, accept=None))
    return command.run_matrix_until_stopped(command.MatrixOptions(
        project_root=root, matrix_file=args.matrix_file, axes=axes, full=args.full,
        pairwise=args.pairwise,
        only=args.only, out=args.out, cache_dir=args.cache_dir, workers=args.workers,
        pytest_args=pytest_args, baseline=args.baseline, env_timeout_s=args.env_timeout,
        resolve=args.resolve, audit=audit, carry=args.carry))


ACTIONS = ("plan", "merge")


def parse(args_in: list[str]) -> argparse.Namespace:
    """The arguments, with ``harness matrix`` options honoured wherever they stand.

    ``--python 3.11 plan`` would make argparse read ``plan`` as a Python version (the
    axis options take one or more values), so the words before the action are parsed
    on their own and merged under the action's: an option given after the action wins.
    """
    parser = _parser()
    at = next((i for i, word in enumerate(args_in[1:], start=1) if word in ACTIONS), None)
    if not args_in or args_in[0] != "matrix" or at is None or at == 1:
        return parser.parse_args(args_in)
    before = parser.parse_args(args_in[:at])
    args = parser.parse_args([args_in[0], *args_in[at:]])
    matrix = parser._subparsers._group_actions[0].choices["matrix"]
    for key, value in vars(before).items():
        if key != "action" and value != matrix.get_default(key) \
                and getattr(args, key, None) == matrix.get_default(key):
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" belongs to pytest; argparse would read it as subcommands.
    pytest_extra: list[str] = []
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, pytest_extra = args_in[:cut], args_in[cut + 1:]
    args = parse(args_in)
    if args.command == "doctor":
        return doctor()
    if args.command == "audit":  # runs in the user's project, not in the harness's checkout
        return audit_command.audit_command(args)
    try:
        return _run(args, pytest_extra)
    except HarnessError as exc:
        print(f"harness {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
