"""The terminal summary: one row per variant run, then the article's claims.

Responsibility: render results (dicts in the results.json shape) as plain text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.verdict import verdicts

COLUMNS = ("scenario", "variant", "driver", "role", "expected", "observed", "ok/total",
           "signatures", "hung", "wrong", "other", "start_s", "run_s", "notes")


def _row(r: Mapping[str, Any]) -> tuple[str, ...]:
    t = r["tasks"]
    sigs = ", ".join(f"{k}:{v}" for k, v in t["by_signature"].items()) or "-"
    found = {k: v for k, v in (r.get("log_findings") or {}).items() if k != "traceback"}
    found.update(r.get("counters") or {})
    notes = ", ".join(f"{k}:{v}" for k, v in found.items())
    if r["outcome"] in ("N/A", "HARNESS_ERROR"):
        notes = (r.get("reason") or "").splitlines()[0][:70] if r.get("reason") else ""
    mark = "" if r.get("passed", True) else " (!)"
    return (r["scenario"], r["variant"], r["driver"], r["role"], r["expected"],
            r["outcome"] + mark, f"{t['ok']}/{t['total']}", sigs, str(t["hung"]),
            str(t["wrong"]), str(t["other"]), f"{r['worker_start_s']:.1f}",
            f"{r['run_s']:.1f}", notes or "-")


def render_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width table; a row whose outcome differs from the expectation ends in (!)."""
    rows = [COLUMNS] + [_row(r) for r in sorted(
        results, key=lambda r: (r["scenario"], r["variant"], r["driver"]))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_verdicts(results: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for v in verdicts(results):
        whose = "the article's claim" if v.source == "the article" else f"the claim ({v.source})"
        lines.append(f"{v.scenario} [{v.driver}]: {whose} {v.verdict.upper()} "
                     f"- {v.detail}")
    return "\n".join(lines)
