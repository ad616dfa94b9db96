"""What ``harness matrix``, ``harness matrix plan|merge`` and ``harness report`` do.

Responsibility: the order of the steps. Everything that can be checked without
building is checked first (axes, every version on the index, interpreters, a
PgBouncer for every PgBouncer version, the baseline file, the pytest selection),
then each environment's resolution (``--resolve``: dated by default, see
:mod:`harness.matrix.resolution`), then environments are built one at a time
(the machine is shared; a build uses the network and one core) and each is
smoke-checked right after its build (:mod:`harness.matrix.smoke`: an environment
that cannot boot a worker is reported in one paragraph within a minute and has no
cells), then each runs its scenarios with xdist, then one merge writes the three
outputs. An environment does not run the cells it can carry from one that ran them
before it (:mod:`harness.matrix.carry`): their outcome depends on no axis in which the
two differ.

Exit codes: 0 done; 1 a cell changed against the baseline; 2 bad input (nothing
was built); 3 an environment could not be built or run (the others are merged).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import environment, interrupts
from harness import results as results_file
from harness.audit.config import CONFIG_ENV, AuditConfig
from harness.errors import ConfigError
from harness.matrix import (
    axes,
    carry,
    containers,
    diff,
    environments,
    index,
    merge,
    pairwise,
    pgbouncer_axis,
    python_support,
    render_html,
    render_md,
    sources,
    table,
)
from harness.matrix import resolution as resolutions
from harness.matrix import smoke as smokes
from harness.matrix.run import SIDECAR, EnvRun, Progress, activated, run_env

EXIT_CHANGED, EXIT_ENV_FAILED = 1, 3
COLLECT_TIMEOUT_S = 180


@dataclass
class MatrixOptions:
    """Everything ``harness matrix`` was asked, after argument parsing."""

    project_root: Path
    matrix_file: Path | None
    axes: Mapping[str, Sequence[str] | None]
    full: bool = False
    pairwise: bool = False
    only: Sequence[str] = ()
    out: Path = Path("reports/matrix")
    cache_dir: Path | None = None
    workers: int = 4
    pytest_args: Sequence[str] = field(default_factory=list)
    baseline: Path | None = None
    env_timeout_s: float = 3600.0
    resolve: str = resolutions.DATED
    # Which cells an environment carries instead of running them: "axes", "strict" or
    # "off" (None: matrix.toml's ``carry``, else "axes"); see harness.matrix.carry.
    carry: str | None = None
    # harness matrix --audit: the audit's checked input; each environment runs the
    # audit's hazards instead of the scenarios.
    audit: AuditConfig | None = None


def say(message: str) -> None:
    print(f"[matrix] {message}", file=sys.stderr, flush=True)


def load_spec(project_root: Path, matrix_file: Path | None,
              options: Mapping[str, Sequence[str] | None], full: bool,
              pairwise: bool = False) -> axes.MatrixSpec:
    """Axes from the matrix file (explicit, else ./matrix.toml if present) and options.

    PgBouncer values are checked for their form and ``local`` becomes the installed
    binary's ``X.Y`` here, so the plan and the run name environments alike.
    """
    path = matrix_file or project_root / "matrix.toml"
    spec = axes.load_toml(path) if (matrix_file or path.exists()) else None
    given = axes.with_options(spec, options, full, pairwise)
    return dataclasses.replace(sources.resolve_postgres(pgbouncer_axis.resolve_pgbouncer(given)),
                               carry=given.carry)


def installable(spec: axes.MatrixSpec, cache_dir: Path | None = None) -> pairwise.Cover | None:
    """For a pairwise plan of resolved versions: the plan, with the python x package pairs
    the index says cannot be installed left out (None for the other modes)."""
    if spec.mode != axes.PAIRWISE:
        return None
    env = environments.uv_environment()
    support = python_support.IndexPythonSupport(
        resolutions.index_url(env), (cache_dir or environments.cache_root()).parent
        / "python-support.json", cafile=env.get("SSL_CERT_FILE"))
    names = axes.present(spec.axes)
    return pairwise.cover({a: spec.axes[a] for a in names},
                          pairwise.forbidding(support.forbidden(spec.axes)))


def planned(spec: axes.MatrixSpec, only: Sequence[str] = (),
            cover: pairwise.Cover | None = None) -> list[axes.Combination]:
    combos = axes.plan(spec, rows=cover.rows if cover else None)
    if only:
        unknown = [o for o in only if o not in {c.id for c in combos}]
        if unknown:
            raise ConfigError(f"--only names {', '.join(unknown)}, which is not in the plan. "
                              f"The plan has: {', '.join(c.id for c in combos)}.")
        combos = [c for c in combos if c.id in only]
    return combos


def check_selection(project_root: Path, pytest_args: Sequence[str],
                    cells_file: Path | None = None) -> int:
    """How many scenario tests the pytest arguments select (collected in this venv);
    with ``cells_file``, the selected cells and their axes are written there.

    Raises:
        ConfigError: nothing is selected, or pytest refuses the arguments.
    """
    argv = [sys.executable, "-m", "pytest", "scenarios/", "--collect-only", "-q",
            "-p", "no:cacheprovider", *pytest_args,
            *(["--list-cells", str(cells_file)] if cells_file else [])]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, cwd=project_root,
                             timeout=COLLECT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"Collecting the scenarios took more than {COLLECT_TIMEOUT_S} s "
                          f"({' '.join(argv[2:])}); run that command to see why.") from exc
    selected = sum(1 for line in out.stdout.splitlines() if "::" in line)
    if out.returncode == 5 or (out.returncode == 0 and selected == 0):
        raise ConfigError(f"No scenario test matches the pytest arguments "
                          f"{' '.join(pytest_args) or '(none)'}. List the scenarios with "
                          f"'pytest scenarios/ --collect-only -q' and pick a -k expression "
                          f"that selects some, e.g. -k loop_bound_pool.")
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-10:])
        raise ConfigError(f"pytest refused the arguments {' '.join(pytest_args)} while "
                          f"collecting the scenarios (exit {out.returncode}):\n{tail}")
    return selected


def write_outputs(matrix: Mapping[str, Any], out: Path, json_too: bool = True) -> list[Path]:
    """matrix.json (unless re-rendering), matrix.md and matrix.html in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if json_too:
        written.append(out / "matrix.json")
        written[-1].write_text(json.dumps(matrix, indent=1) + "\n")
    written.append(out / "matrix.md")
    written[-1].write_text(render_md.render(matrix))
    written.append(out / "matrix.html")
    written[-1].write_text(render_html.render(matrix))
    return written


def _compare_with_baseline(matrix: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> int:
    if baseline is None:
        return 0
    found = diff.compare(baseline, matrix)
    print(diff.render(found))
    return EXIT_CHANGED if found.changes else 0


def _summary(matrix: Mapping[str, Any], written: Sequence[Path]) -> None:
    names = dict(zip((e["id"] for e in matrix["environments"]), table.short_names(matrix)))
    for eid, name in names.items():
        print(f"{name} = {eid}")
    moving = [r for r in table.rows(matrix) if r.differs]
    print(f"{len(moving)} row(s) differ between environments" + (":" if moving else "."))
    for r in moving:
        cells = ", ".join(f"{n} {table.cell_text(c, names)}"
                          for n, c in zip(names.values(), r.cells))
        print(f"  {r.scenario} / {r.variant} / {r.driver}: {cells}")
    for v in matrix["verdicts"]:
        if v["overall"] == merge.DEPENDS:
            print(f"  claim {v['scenario']} [{v['driver']}] depends on version")
    for path in written:
        print(f"wrote {path}")


def resolutions_for(combos: Sequence[axes.Combination], mode: str, cache_dir: Path | None
                    ) -> dict[str, resolutions.Resolution]:
    """Each environment's resolution (by venv id), upload times asked once and cached."""
    upload_times = None
    if resolutions.check_mode(mode) == resolutions.DATED:
        env = environments.uv_environment()
        upload_times = resolutions.IndexUploadTimes(
            resolutions.index_url(env), (cache_dir or environments.cache_root()).parent
            / "upload-times.json", cafile=env.get("SSL_CERT_FILE"))
    return {c.venv_id: resolutions.resolution_for(c.versions, mode, upload_times)
            for c in combos}


def smoke_failed(combo: axes.Combination, env: environments.BuiltEnv, python: str,
                 smoke: smokes.Smoke, pgbouncer: pgbouncer_axis.PgBouncerSource, runs: Path
                 ) -> tuple[str, Path]:
    """Report a failed smoke check: its paragraph, and a results.json with no results
    whose sidecar says why, so the merged matrix lists the environment without cells."""
    pins = [f"{a} {combo.versions[a]}" for a in axes.PACKAGE_AXES] + [f"python {python}"]
    text = smokes.paragraph(combo.id, smoke, env.installed, pins,
                            env.resolution.describe(),
                            latest=env.resolution.mode == resolutions.LATEST)
    path = _without_cells(combo, env, pgbouncer, python, runs,
                          {"smoke": {**smoke.to_dict(), "report": text}})
    return text, path


def _without_cells(combo: axes.Combination, env: environments.BuiltEnv,
                   services: pgbouncer_axis.PgBouncerSource, python: str, runs: Path,
                   facts: Mapping[str, Any]) -> Path:
    """A results.json of ``combo`` (in ``env``) with no results, and its sidecar with
    ``facts`` (why it has none), for the merge; its path."""
    installed = env.installed
    document = {"schema": results_file.SCHEMA, "run_id": results_file.new_run_id(),
                "environment": {
                    "python": python,
                    "packages": {n: installed[n] for n in environment.PACKAGES if n in installed},
                    "services": {"backend": services.backend}},
                "results": []}
    path = results_file.write(document, runs / combo.id)
    (path.parent / SIDECAR).write_text(json.dumps(
        {"id": combo.id, "slot": combo.slot, "axes": dict(combo.versions),
         "env_path": str(env.path), "backend": services.backend,
         "pgbouncer_image": services.image, "pytest_exit": None, "pytest_args": [],
         **env.facts(), **facts}, indent=1) + "\n")
    return path


@containers.removing_containers
def run_matrix(opts: MatrixOptions) -> int:
    """``harness matrix``: check, build, run, merge, compare."""
    spec = load_spec(opts.project_root, opts.matrix_file, opts.axes, opts.full, opts.pairwise)
    policy = carry.check_policy(opts.carry or spec.carry, "--carry")
    baseline = merge.load_any(opts.baseline) if opts.baseline else None
    say(f"checking the versions of {spec.source} on the package index")
    spec = index.resolve_spec(spec)
    cover = installable(spec, opts.cache_dir)
    if cover is not None:
        say(f"pairwise plan: {len(cover.rows)} environments cover every pair of values of any "
            f"two axes" + (f"; {len(cover.impossible)} pair(s) cannot be installed: "
                           + ", ".join(pairwise.describe(p) for p in cover.impossible)
                           if cover.impossible else ""))
    combos = planned(spec, opts.only, cover)
    # Only what the planned environments use must exist here: a CI shard (--only) needs
    # neither the other Python lines nor the other PgBouncer versions.
    # A Python with no interpreter here runs in its interpreter image (a container env).
    pythons, services = where_envs_run(combos)
    out = opts.out.resolve()
    cells: list[carry.Cell] = []
    if opts.audit is not None:
        tests = len(opts.audit.hazards)
        target, extra_env = audit_target(opts.audit)
        if policy != carry.OFF:
            say("carrying is off with --audit: every hazard runs in every environment")
            policy = carry.OFF
    else:
        cells_file = out / "logs" / "cells.json" if policy != carry.OFF else None
        if cells_file:
            cells_file.parent.mkdir(parents=True, exist_ok=True)
        tests = check_selection(opts.project_root, opts.pytest_args, cells_file)
        target, extra_env = ("scenarios/",), {}
        cells = carry.read_cells(cells_file) if cells_file else []
    resolved = resolutions_for(combos, opts.resolve, opts.cache_dir)
    places = {c.id: services[c.id].describe() for c in combos}
    simulated = {p.id: p for p in carry.simulate(
        [(c.id, c.versions) for c in combos], cells, policy, places)}
    say(f"{len(combos)} environments ({spec.mode}), {tests} scenario tests selected; carry "
        f"policy {policy}" + (" (each environment runs only the cells its axes can move)"
                              if policy != carry.OFF else ""))
    for c in combos:
        counts = simulated.get(c.id)
        runs = (f"; runs {counts.runs}, carries {counts.carried_total}"
                if counts and policy != carry.OFF else "")
        say(f"  {c.slot:<12} {c.id}  (python {pythons[c.versions['python']].version}, "
            f"{services[c.id].describe()}; resolution "
            f"{resolved[c.venv_id].describe()}{runs})")
    progress = Progress(len(combos), tests, ids=[c.id for c in combos])
    if policy != carry.OFF:
        progress.runs = {c.id: simulated[c.id].runs for c in combos}
    Progress.current = progress
    failed: list[str] = []
    built = []
    documents = []
    for combo in combos:  # one build at a time: the machine is shared
        pgbouncer = services[combo.id]
        try:
            env = containers.build_any(
                combo, pythons[combo.versions["python"]], opts.project_root,
                root=opts.cache_dir, log_path=out / "logs" / f"{combo.id}.build.log",
                resolution=resolved[combo.venv_id])
        except environments.EnvBuildError as exc:
            failed.append(f"{combo.id}: {exc}")
            progress.say(f"environment {combo.id} could not be built: {exc}")
            continue
        progress.env_built(env)
        smoke = smokes.check(env.python, opts.project_root, out / "logs" / f"{combo.id}.smoke",
                             backend=pgbouncer.backend, env=activated(env, pgbouncer))
        if not smoke.ok:
            text, path = smoke_failed(combo, env, pythons[combo.versions["python"]].version,
                                      smoke, pgbouncer, out / "runs")
            print(text, file=sys.stderr, flush=True)
            failed.append(f"{combo.id}: the smoke check failed ({smoke.error}); see above")
            documents.append((results_file.load(path), merge.read_sidecar(path), str(path)))
            progress.env_skipped(combo.id)
            continue
        progress.say(f"smoke check of {combo.id} passed in {smoke.seconds:.1f} s")
        built.append((env, smoke))
    earlier: list[carry.Ran] = []  # environments that ran, for the next to carry from
    for env, smoke in built:
        combo = env.combo
        here = carry.Ran(combo.id, combo.versions, installed=env.installed,
                         place=_place(env, services[combo.id]))
        carried = carry.carried_cells(cells, here, earlier, policy)
        facts = {"smoke": smoke.to_dict()}
        pytest_args = list(opts.pytest_args)
        if policy != carry.OFF:
            facts.update(carried=carry.sidecar_entries(carried), carry_policy=policy)
            progress.runs[combo.id] = len(cells) - len(carried)
        if carried:
            sources_named = sorted(set(carried.values()))
            elsewhere = sorted({e.place for e in earlier if e.id in sources_named
                                and e.place != here.place})
            progress.say(f"{combo.id}: runs {len(cells) - len(carried)} cells, carries "
                         f"{len(carried)} from {', '.join(sources_named)}"
                         + (f" (observed on {'; '.join(elsewhere)}, not on {here.place}: "
                            f"carrying assumes that moves no cell; carry = \"strict\" runs "
                            f"them here)" if elsewhere else ""))
            pytest_args += ["--skip-cells", str(carry.write_skip(
                out / "logs" / f"{combo.id}.carried.json", carried))]
        if cells and len(carried) == len(cells):
            path = all_carried(env, services[combo.id], pythons[combo.versions["python"]].version,
                               out / "runs", facts)
            progress.env_ran(EnvRun(env, path, 0, 0.0, 0, 0, results=path))
            documents.append((results_file.load(path), merge.read_sidecar(path), str(path)))
            continue
        run = run_env(env, opts.project_root, out / "runs", out / "logs" / f"{combo.id}"
                      ".pytest.log", workers=opts.workers, pytest_args=pytest_args,
                      progress=progress, timeout_s=opts.env_timeout_s,
                      pgbouncer=services[combo.id],
                      facts=facts, target=target, extra_env=extra_env)
        progress.env_ran(run)
        if run.error:
            failed.append(f"{combo.id}: {run.error}")
        if run.results:
            document = results_file.load(run.results)
            documents.append((document, merge.read_sidecar(run.results), str(run.results)))
            here.fresh = {merge.cell_key(r): r for r in document.get("results", [])
                          if not r.get("carried_from")}
            earlier.append(here)
    code = 0
    if documents:  # what the other environments found is still worth merging
        matrix = merge.merge(documents)
        _summary(matrix, write_outputs(matrix, out))
        code = _compare_with_baseline(matrix, baseline)
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return EXIT_ENV_FAILED if failed else code


def _place(env: environments.BuiltEnv, services: sources.EnvServices) -> str:
    """Where an environment's cells run: its backend and images, and its container."""
    runs_in = (env.facts().get("runs_in") or {}).get("image")
    return services.describe() + (f", in {runs_in}" if runs_in else "")


def all_carried(env: environments.BuiltEnv, services: pgbouncer_axis.PgBouncerSource,
                python: str, runs: Path, facts: Mapping[str, Any]) -> Path:
    """An environment that carries every selected cell runs no pytest: a results.json
    with no results of its own, and a sidecar listing what it carried, for the merge."""
    return _without_cells(env.combo, env, services, python, runs, facts)


def audit_target(config: AuditConfig) -> tuple[tuple[str, ...], dict[str, str]]:
    """What an environment's pytest collects for ``--audit``, and the variable that
    carries the audit's input (checked once, here, before anything is built)."""
    return (("--pyargs", "harness.audit.suite", "-c", os.devnull,
             "--rootdir", config.project_dir), {CONFIG_ENV: config.to_json()})


def plan_command(project_root: Path, matrix_file: Path | None,
                 options: Mapping[str, Sequence[str] | None], full: bool, fmt: str,
                 check: bool, pairwise_plan: bool = False, carry_policy: str | None = None
                 ) -> int:
    """``harness matrix plan``: the environments, as text or a GitHub Actions include list."""
    spec = load_spec(project_root, matrix_file, options, full, pairwise_plan)
    if carry_policy is not None:
        spec = replace(spec, carry=carry_policy)
    # CI's plan job checks versions once, before any runner starts; a pairwise plan
    # always does: which pairs can be installed is a fact of the exact versions.
    if check or spec.mode == axes.PAIRWISE:
        # Package versions only: whether a PgBouncer version has a binary or an image is
        # a question for the machine that runs the environment (harness matrix --only).
        spec = index.resolve_spec(spec)
    cover = installable(spec)
    combos = planned(spec, cover=cover)
    if fmt == "github":
        print(json.dumps(axes.github_include(combos), separators=(",", ":")))
        return 0
    # One environment carries nothing: only a plan of several says what each runs.
    cells, why_none = (planned_cells(project_root, spec.carry) if len(combos) > 1
                       else ([], ""))
    places, places_unknown = (plan_places(combos) if cells and spec.carry == carry.STRICT
                              else ({}, ""))
    counts = {p.id: p for p in carry.simulate([(c.id, c.versions) for c in combos], cells,
                                              spec.carry, places)} if cells else {}
    names = {c.id: f"E{i}" for i, c in enumerate(combos, start=1)}
    for i, c in enumerate(combos):
        print(f"{c.slot:<12} {c.id}")
        if c.id in counts:
            p = counts[c.id]
            print(f"{'':<12}   runs {p.runs} of {len(cells)} cells, carries {p.carried_total}"
                  + (" (" + ", ".join(f"{n} from {names[s]}" for s, n in p.carried.items())
                     + ")" if p.carried else ""))
        if cover is not None:
            print(f"{'':<12}   covers {len(cover.new_pairs[i])} new pair(s): "
                  + "; ".join(pairwise.describe(p) for p in cover.new_pairs[i]))
    if cover is not None:
        total = sum(len(n) for n in cover.new_pairs)
        print(f"{len(combos)} environments cover all {total} pairs of values of any two axes"
              + ("; not installable, so not covered: "
                 + "; ".join(pairwise.describe(p) for p in cover.impossible)
                 if cover.impossible else ""))
    if counts:
        ran = sum(p.runs for p in counts.values())
        print(f"carry policy {spec.carry}: {ran} of {len(cells) * len(combos)} cells run, "
              f"{len(cells) * len(combos) - ran} carried from an environment that runs them "
              f"(cells whose axes differ, by the driver's package and whether the scenario "
              f"goes through PgBouncer; an environment whose other installed packages differ "
              f"once built runs more; carry = \"off\" in matrix.toml runs every cell)")
        if places_unknown:
            print(places_unknown)
    elif why_none:
        print(why_none)
    return 0


def where_envs_run(combos: Sequence[axes.Combination]
                   ) -> tuple[dict[str, sources.PythonSource], dict[str, sources.EnvServices]]:
    """Each planned Python's interpreter (here, or its image) and each environment's
    backend and service images: what ``run_matrix`` runs them on and ``plan_places``
    counts with. Raises ConfigError when something they need is missing here."""
    pythons = sources.python_sources(c.versions["python"] for c in combos)
    pgbouncers = pgbouncer_axis.pgbouncer_sources(c.versions["pgbouncer"] for c in combos)
    return pythons, sources.env_services(combos, pythons, pgbouncers)


def plan_places(combos: Sequence[axes.Combination]) -> tuple[dict[str, str], str]:
    """Where each environment would run (backend and images), as ``run_matrix`` decides it
    from this machine's interpreters, PgBouncer and images, for the strict policy's counts;
    or none and why the counts assume one place for all."""
    try:
        _, services = where_envs_run(combos)
    except ConfigError as exc:
        return {}, (f"carry policy strict: where each environment runs is not known here "
                    f"({_first_line(str(exc))}), so these counts assume one backend for all; "
                    f"an environment on another backend or in a container runs more")
    return {c.id: services[c.id].describe() for c in combos}, ""


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def planned_cells(project_root: Path, policy: str) -> tuple[list[carry.Cell], str]:
    """Every scenario cell and the axes it depends on (collected in this venv), or none and
    why (carrying off, or the scenarios cannot be collected here)."""
    if policy == carry.OFF:
        return [], "carry policy off: every environment runs every cell"
    with tempfile.TemporaryDirectory(prefix="harness-cells-") as tmp:
        path = Path(tmp) / "cells.json"
        try:
            check_selection(project_root, [], path)
        except ConfigError as exc:
            return [], f"cells per environment not shown: {exc}"
        return carry.read_cells(path), ""


def merge_command(paths: Sequence[Path], out: Path, baseline: Path | None) -> int:
    """``harness matrix merge``: results from shards (files or folders) into one matrix."""
    old = merge.load_any(baseline) if baseline else None
    matrix = merge.merge_paths(paths)
    _summary(matrix, write_outputs(matrix, out))
    return _compare_with_baseline(matrix, old)


def report_command(path: Path, out: Path | None) -> int:
    """``harness report FILE``: re-render matrix.md and matrix.html from any results JSON."""
    matrix = merge.load_any(path)
    for written in write_outputs(matrix, out or path.parent, json_too=False):
        print(f"wrote {written}")
    return 0


def diff_command(old: Path, new: Path) -> int:
    """``harness report diff OLD NEW``: exit 1 when any cell changed outcome."""
    return _compare_with_baseline(merge.load_any(new), merge.load_any(old))


def run_matrix_until_stopped(opts: MatrixOptions) -> int:
    """:func:`run_matrix`, stopped cleanly by SIGINT, SIGTERM or SIGHUP.

    The environment that is running gets SIGTERM and stops its services (its own
    list of unrun tests is printed); environments after it do not start; nothing is
    merged. A second signal kills everything at once (:mod:`harness.interrupts`).
    Exit code: 128 + the signal's number, as a shell reports a process it stopped.
    """
    interrupts.install()
    Progress.current = None
    try:
        return run_matrix(opts)
    except KeyboardInterrupt:
        signum = interrupts.received() or signal.SIGINT
        progress = Progress.current
        unrun = [i for i in progress.ids if i not in progress.ran_ids] if progress else []
        say(f"interrupted by {signal.Signals(signum).name}: nothing was merged; "
            + (f"{len(unrun)} environment(s) did not run to the end: {', '.join(unrun)}"
               if unrun else "no environment had started its scenarios"))
        return 128 + signum
