"""matrix.md: the matrix for terminals and pull requests.

Responsibility: render a matrix document as GitHub-flavoured Markdown: a legend
of environments, then per scenario the article's claim, its verdict per driver,
and a table with one row per variant x driver and one column per environment.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.matrix import table
from harness.matrix.merge import DEPENDS


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _legend(matrix: Mapping[str, Any]) -> list[str]:
    names = table.short_names(matrix)
    changed = table.changed_axes(matrix)
    heads = ["env", "slot", *table.AXIS_LABELS.values(), *table.SERVICE_LABELS.values(),
             "resolution"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name, env, moved in zip(names, matrix["environments"], changed):
        versions = table.env_versions(env)
        cells = [f"**{v}**" if axis in moved else v for axis, v in versions.items()]
        services = table.env_services(env)
        # A service that is also an axis (postgres) is bold where that axis moved.
        cells += [f"**{services[label]}**" if key in moved and label in services
                  else services.get(label, "-") for key, label in table.SERVICE_LABELS.items()]
        cells.append(table.env_resolution(env))
        lines.append(f"| {name} | {env.get('slot', '')} | " + " | ".join(cells) + " |")
    notes = table.env_notes(matrix)
    if notes:
        lines.append("")
        lines += [f"- {name}: {_esc(text)}" for name, text in notes]
    lines += ["", ("Resolution: 'dated D' installed every package an environment does not pin "
              "as it could be installed on D (its newest pinned release, plus a day); "
              "'latest' is today's resolution.")]
    unobserved = _unobserved_rule_branches(matrix)
    if unobserved:
        lines.append("")
        lines += [f"- {_esc(text)}" for text in unobserved]
    return lines


def _unobserved_rule_branches(matrix: Mapping[str, Any]) -> list[str]:
    """The version-rule branches of this matrix's scenarios that neither this matrix nor a
    recorded run (docs/matrix/rule-observations.json of the checkout here) observed:
    an expectation no run has shown, which a reader should weigh as such."""
    from harness import rules  # late: it imports every scenario module

    here = Path.cwd().resolve()
    root = next((d for d in (here, *here.parents)
                 if (d / "scenarios").is_dir() and (d / "pyproject.toml").is_file()), here)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    record = root / "docs/matrix/rule-observations.json"
    try:
        recorded = json.loads(record.read_text()) if record.is_file() else None
        return rules.legend_lines(dict(matrix), recorded)
    except (ImportError, ConfigError, ValueError, KeyError) as exc:
        # Rendered away from a checkout (harness report elsewhere): the scenarios are
        # not importable, so their rules cannot be listed.
        return [f"Rule branches not checked: {exc}"]


def _verdict_lines(verdict: Mapping[str, Any], names: dict[str, str]) -> list[str]:
    head = f"- {verdict['driver']}: **{verdict['overall']}**"
    by_env = verdict["by_env"]
    if verdict["overall"] == DEPENDS:
        parts = [f"{names[e]} {v['verdict']}" for e, v in by_env.items()]
        return [head + " (" + "; ".join(parts) + ")"]
    details = sorted({v["detail"] for v in by_env.values()})
    return [head + (f": {_esc(details[0])}" if len(details) == 1 else "")]


def render(matrix: Mapping[str, Any]) -> str:
    """The whole matrix.md text."""
    names = dict(zip((e["id"] for e in matrix["environments"]), table.short_names(matrix)))
    rows = table.rows(matrix)
    differ = sum(r.differs for r in rows)
    moved = sum(1 for r in rows for c in r.cells if c is not None and c.get("passed") is False)
    carried = sum(1 for r in rows for c in r.cells if c is not None and c.get("carried_from"))
    intro = (f"{len(matrix['environments'])} environments, {len(rows)} rows (scenario x "
             f"variant x driver). {differ} rows differ between environments; {moved} cells are "
             f"not the scenario's expectation, marked (!). Bold versions differ from E1. A cell "
             f"reads OUTCOME ok/total.")
    if carried:
        intro += (f" {carried} cells end in (= En): they were not run in their column but "
                  f"carried from En, which ran them, because they depend on no axis in which "
                  f"the two environments differ (see the notes under the legend); a (!) "
                  f"there is En's observation.")
    lines = ["# Compatibility matrix", "", intro, "", *_legend(matrix), ""]
    verdicts = table.verdict_index(matrix)
    for scenario in sorted({r.scenario for r in rows}):
        lines += [f"## {scenario}", ""]
        claims = [v for (s, _), v in sorted(verdicts.items()) if s == scenario]
        if claims:
            claim = claims[0]["claim"]
            source = claim.get("source", "the article")
            lines.append(f"{source[:1].upper()}{source[1:]}: \"{_esc(claim.get('error', ''))}\"; fix: "
                         f"\"{_esc(claim.get('fix', ''))}\". Verdict:")
            for v in claims:
                lines += _verdict_lines(v, names)
            lines.append("")
        heads = ["variant", "driver", "role", *names.values(), "differs"]
        lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for r in (r for r in rows if r.scenario == scenario):
            cells = [table.cell_text(c, names) for c in r.cells]
            lines.append(f"| {r.variant} | {r.driver} | {r.role} | " + " | ".join(cells)
                         + f" | {'yes' if r.differs else ''} |")
        lines.append("")
    return "\n".join(lines)
