"""The audit's table and exit status, from its results.json.

Responsibility: pure rendering. One row per hazard: the outcome word, the calls, the
signatures met, the scenario to read, and the fixes that scenario was observed to
clear on the same versions (from a results.json of ``pytest scenarios/``, when one is
given or found), never from a list written by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.audit.hazards import explaining_scenario

# Package versions that must match for a scenario run to speak for the audit's run.
SAME_VERSIONS = ("sqlalchemy", "celery", "kombu", "asyncpg", "psycopg")

EXIT_CLEAN = 0
EXIT_FOUND = 1  # a hazard that is not accepted reproduced
EXIT_UNTRUSTED = 3  # a hazard could not be run (HARNESS_ERROR): nothing was learnt there


def scenario_for(hazard: str, driver: str) -> str:
    name = explaining_scenario(hazard)
    if name.startswith("pgbouncer-prepared"):
        return f"pgbouncer-prepared-{driver}"
    return name


def observed_fixes(scenarios_doc: Mapping[str, Any] | None, audit_doc: Mapping[str, Any],
                   scenario: str, driver: str) -> str:
    """The fix variants of ``scenario`` that were CLEAN for ``driver`` on the same versions."""
    if not scenarios_doc:
        return f"(run pytest scenarios/ --scenario {scenario})"
    ours = audit_doc.get("environment", {}).get("packages", {})
    theirs = scenarios_doc.get("environment", {}).get("packages", {})
    differ = [p for p in SAME_VERSIONS if ours.get(p) != theirs.get(p)]
    if differ:
        return f"(the scenarios' results are for other versions of {', '.join(differ)})"
    fixes = sorted({r["variant"] for r in scenarios_doc.get("results", ())
                    if r["scenario"] == scenario and r["driver"] == driver
                    and r["role"] in ("fix", "article-fix") and r["outcome"] == "CLEAN"})
    return ", ".join(fixes) or "(no fix of that scenario was clean on these versions)"


def rows(audit_doc: Mapping[str, Any], accept: Sequence[str],
         scenarios_doc: Mapping[str, Any] | None = None) -> list[tuple[str, ...]]:
    found = []
    for r in audit_doc.get("results", ()):
        if r["scenario"] != "audit":
            continue
        t = r["tasks"]
        outcome = r["outcome"]
        if outcome not in ("CLEAN", "N/A", "HARNESS_ERROR") and r["variant"] in accept:
            outcome += " (accepted)"
        sigs = ", ".join(f"{k}:{v}" for k, v in t["by_signature"].items()) or "-"
        if t["hung"]:
            sigs = f"{sigs}; hung:{t['hung']}" if sigs != "-" else f"hung:{t['hung']}"
        scenario = scenario_for(r["variant"], r["driver"])
        if outcome in ("N/A", "HARNESS_ERROR"):
            fixes = (r.get("reason") or "").splitlines()[0][:90] if r.get("reason") else ""
        elif outcome == "CLEAN":
            fixes = "-"
        else:
            fixes = observed_fixes(scenarios_doc, audit_doc, scenario, r["driver"])
        found.append((r["variant"], r["driver"], outcome, f"{t['ok']}/{t['total']}", sigs,
                      scenario, fixes))
    return found


def render(audit_doc: Mapping[str, Any], accept: Sequence[str],
           scenarios_doc: Mapping[str, Any] | None = None) -> str:
    header = ("hazard", "driver", "outcome", "ok/total", "signatures", "read scenario",
              "fixes observed clean there")
    table = [header, *rows(audit_doc, accept, scenarios_doc)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    env = audit_doc.get("environment", {})
    packages = env.get("packages", {})
    versions = ", ".join(f"{p} {packages[p]}" for p in ("sqlalchemy", "celery", "asyncpg",
                                                         "psycopg") if p in packages)
    services = env.get("services", {})
    lines.insert(0, f"Audit on Python {env.get('python', '?')}, {versions}; "
                    + ", ".join(f"{k} {v}" for k, v in sorted(services.items())
                                if k in ("postgres", "pgbouncer", "redis", "backend")))
    return "\n".join(lines)


def exit_status(audit_doc: Mapping[str, Any], accept: Sequence[str]) -> int:
    results = [r for r in audit_doc.get("results", ()) if r["scenario"] == "audit"]
    if any(r["outcome"] not in ("CLEAN", "N/A", "HARNESS_ERROR") and r["variant"] not in accept
           for r in results):
        return EXIT_FOUND
    if any(r["outcome"] == "HARNESS_ERROR" for r in results):
        return EXIT_UNTRUSTED
    return EXIT_CLEAN
