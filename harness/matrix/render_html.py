"""matrix.html: one self-contained page for people.

Responsibility: render a matrix document as a single HTML file (inline CSS and
JavaScript, no network): cells coloured by outcome, each cell's counts and real
error text on expansion, filters by scenario, driver and outcome, and the
article's claim with its verdict per scenario and driver.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Any

from harness.matrix import table
from harness.matrix.merge import DEPENDS

OUTCOMES = ("REPRODUCED", "CLEAN", "OTHER_FAILURE", "HARNESS_ERROR", "N/A")

CSS = """
body{font:13px/1.35 system-ui,sans-serif;margin:1.5em;color:#1b1f24}
h1{font-size:1.4em;margin:0 0 .3em} table{border-collapse:collapse}
th,td{border:1px solid #c9ced6;padding:3px 6px;vertical-align:top;text-align:left}
thead th{background:#eef1f5;position:sticky;top:0}
.legend td.changed{font-weight:bold;background:#fff3bf}
.filters{margin:1em 0;display:flex;gap:1em;flex-wrap:wrap;align-items:center}
tr.scenario-row th{background:#dfe6ee;font-weight:normal}
tr.scenario-row .name{font-weight:bold;font-size:1.05em}
.o-REPRODUCED{background:#f6c6c3}.o-CLEAN{background:#c9efd4}
.o-OTHER_FAILURE{background:#fbe7a5}.o-HARNESS_ERROR{background:#dcc6ec}
.o-NA{background:#e7e9ec;color:#555}.o-none{background:#fff;color:#999}
.knobs{font-size:12px;color:#444;max-width:30em}
td.moved{outline:3px dashed #b42318;outline-offset:-3px}
td.carried summary{font-style:italic;opacity:.75}
tr.cell-row td:nth-child(-n+3){white-space:nowrap}
tr.differs td.variant::after{content:" \\2260";color:#b42318;font-weight:bold}
details summary{cursor:pointer;white-space:nowrap}
pre{white-space:pre-wrap;max-width:30em;font-size:12px;margin:.3em 0}
.v{padding:1px 5px;border-radius:3px;white-space:nowrap}
.v-holds{background:#c9efd4}.v-holds-with-a-different-error{background:#fbe7a5}
.v-does-not-hold{background:#f6c6c3}.v-depends-on-version{background:#cfe0fb}
.v-unknown,.v-n-a{background:#e7e9ec}
"""

SCRIPT = """
const $ = (id) => document.getElementById(id);
function applyFilters() {
  const s = $('f-scenario').value, d = $('f-driver').value, o = $('f-outcome').value;
  const differs = $('f-differs').checked, moved = $('f-moved').checked;
  let shown = 0; const visible = new Set();
  for (const row of document.querySelectorAll('tr.cell-row')) {
    const ok = (!s || row.dataset.scenario === s) && (!d || row.dataset.driver === d)
      && (!o || row.dataset.outcomes.split(' ').includes(o))
      && (!differs || row.dataset.differs === '1') && (!moved || row.dataset.moved === '1');
    row.hidden = !ok;
    if (ok) { shown++; visible.add(row.dataset.scenario); }
  }
  for (const row of document.querySelectorAll('tr.scenario-row'))
    row.hidden = !visible.has(row.dataset.scenario);
  $('shown').textContent = shown + ' of ' + document.querySelectorAll('tr.cell-row').length
    + ' rows';
}
for (const id of ['f-scenario', 'f-driver', 'f-outcome', 'f-differs', 'f-moved'])
  $(id).addEventListener('change', applyFilters);
applyFilters();
"""


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def _outcome_class(outcome: str | None) -> str:
    return "o-none" if outcome is None else "o-" + outcome.replace("/", "")


def _select(ident: str, label: str, values: list[str]) -> str:
    options = "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in values)
    return (f'<label>{label} <select id="{ident}"><option value="">all</option>{options}'
            f'</select></label>')


def _legend(matrix: Mapping[str, Any]) -> str:
    heads = ["env", "slot", *table.AXIS_LABELS.values(), *table.SERVICE_LABELS.values(),
             "resolution"]
    out = ['<table class="legend"><thead><tr>'
           + "".join(f"<th>{h}</th>" for h in heads) + "</tr></thead><tbody>"]
    for name, env, moved in zip(table.short_names(matrix), matrix["environments"],
                                table.changed_axes(matrix)):
        cells = [f'<td class="{"changed" if a in moved else ""}">{escape(v)}</td>'
                 for a, v in table.env_versions(env).items()]
        services = table.env_services(env)
        # A service that is also an axis (postgres) is marked where that axis moved.
        cells += [f'<td class="{"changed" if key in moved else ""}">'
                  f"{escape(services.get(s, '-'))}</td>"
                  for key, s in table.SERVICE_LABELS.items()]
        resolution = env.get("resolution") or {}
        cells.append(f'<td title="{escape(str(resolution.get("newest") or ""))}">'
                     f'{escape(table.env_resolution(env))}</td>')
        out.append(f'<tr><th title="{escape(env["id"])}">{name}</th>'
                   f'<td>{escape(env.get("slot", ""))}</td>{"".join(cells)}</tr>')
    notes = "".join(f"<li><b>{name}</b>: {escape(text)}</li>"
                    for name, text in table.env_notes(matrix))
    return ("".join(out) + "</tbody></table>" + (f'<ul class="notes">{notes}</ul>' if notes
                                                 else ""))


def _verdict_badge(verdict: Mapping[str, Any] | None, names: dict[str, str]) -> str:
    if verdict is None:
        return '<span class="v v-n-a">no claim</span>'
    lines = [f"{names.get(e, e)}: {v['verdict']} - {v['detail']}"
             for e, v in verdict["by_env"].items()]
    return (f'<span class="v v-{_slug(verdict["overall"])}" title="{escape(chr(10).join(lines))}">'
            f'{escape(verdict["overall"])}</span>')


def _cell(cell: Mapping[str, Any] | None, names: Mapping[str, str] | None = None) -> str:
    if cell is None:
        return '<td class="cell o-none">not run</td>'
    moved = cell.get("passed") is False
    error = cell.get("first_error") or cell.get("reason") or ""
    expected = f"expected {cell.get('expected', '?')}" + (" - this cell moved" if moved else "")
    if cell.get("carried_from"):
        expected += (f" - carried from {table.carried_name(cell, names)} "
                     f"({cell['carried_from']}): not run in this environment")
    first_line = error.splitlines()[0][:200] if error else ""
    tip = f"{table.counts(cell)}\n{expected}" + (f"\n{first_line}" if first_line else "")
    knobs = cell.get("knobs") or {}
    meanings = "".join(f"<li><b>{escape(name)}</b>: {escape(text)}</li>"
                       for name, text in (cell.get("signature_help") or {}).items())
    body = (f"<div>{escape(table.counts(cell))}</div><div>{escape(expected)}</div>"
            + (f"<pre>{escape(error)}</pre>" if error else "")
            + (f'<ul class="knobs">{meanings}</ul>' if meanings else "")
            + (f'<div class="knobs">knobs in force: {escape(_knob_text(knobs))}</div>'
               if knobs else ""))
    classes = (f"cell {_outcome_class(cell['outcome'])}" + (" moved" if moved else "")
               + (" carried" if cell.get("carried_from") else ""))
    return (f'<td class="{classes}" data-outcome="{escape(cell["outcome"])}" '
            f'title="{escape(tip)}"><details><summary>{escape(table.cell_text(cell, names))}'
            f"</summary>{body}</details></td>")


def _description(row: table.Row) -> str:
    """The variant's description (from any environment that ran it), for its tooltip."""
    return next((c.get("description") for c in row.cells if c and c.get("description")), "")


def _knob_text(knobs: Mapping[str, Any]) -> str:
    """``pool=null, loop=per-task, ...``: every knob the app ran with, defaults included."""
    return ", ".join(f"{name}={json.dumps(value)}" for name, value in knobs.items())


def _scenario_header(scenario: str, verdicts: list[Mapping[str, Any]], names: dict[str, str],
                     width: int) -> str:
    text = f'<span class="name">{escape(scenario)}</span>'
    if verdicts:
        claim = verdicts[0]["claim"]
        text += (f' - {escape(claim.get("source", "the article"))}: '
                 f'"{escape(claim.get("error", ""))}"; fix: '
                 f'"{escape(claim.get("fix", ""))}". Verdict: '
                 + ", ".join(f"{escape(v['driver'])} {_verdict_badge(v, names)}"
                             for v in verdicts))
    return (f'<tr class="scenario-row" data-scenario="{escape(scenario)}">'
            f'<th colspan="{width}">{text}</th></tr>')


def render(matrix: Mapping[str, Any], title: str = "Compatibility matrix") -> str:
    """The whole page as one string."""
    names = dict(zip((e["id"] for e in matrix["environments"]), table.short_names(matrix)))
    rows = table.rows(matrix)
    verdicts = table.verdict_index(matrix)
    scenarios = sorted({r.scenario for r in rows})
    # The scenario and its claim's verdict per driver head each group of rows.
    head = ["variant", "driver", "role", *names.values()]
    body = []
    for scenario in scenarios:
        found = [v for (s, _), v in sorted(verdicts.items()) if s == scenario]
        body.append(_scenario_header(scenario, found, names, len(head)))
        for r in (r for r in rows if r.scenario == scenario):
            moved = any(c is not None and c.get("passed") is False for c in r.cells)
            body.append(
                f'<tr class="cell-row{" differs" if r.differs else ""}" '
                f'data-scenario="{escape(r.scenario)}" data-driver="{escape(r.driver)}" '
                f'data-outcomes="{escape(" ".join(r.outcomes))}" '
                f'data-differs="{int(r.differs)}" data-moved="{int(moved)}">'
                f'<td class="variant" title="{escape(_description(r))}">{escape(r.variant)}</td>'
                f"<td>{escape(r.driver)}</td><td>{escape(r.role)}</td>"
                + "".join(_cell(c, names) for c in r.cells) + "</tr>")
    differ = sum(r.differs for r in rows)
    depends = sum(v["overall"] == DEPENDS for v in verdicts.values())
    filters = "".join([
        _select("f-scenario", "scenario", scenarios),
        _select("f-driver", "driver", sorted({r.driver for r in rows})),
        _select("f-outcome", "outcome", [o for o in OUTCOMES
                                         if any(o in r.outcomes for r in rows)]),
        ('<label><input type="checkbox" id="f-differs"> only rows that differ between '
         'environments</label>'),
        '<label><input type="checkbox" id="f-moved"> only rows with a moved cell (!)</label>',
        '<span id="shown"></span>'])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{escape(title)}</h1>
<p>{len(matrix["environments"])} environments, {len(rows)} rows (scenario x variant x driver);
{differ} rows differ between environments (&#8800;); {depends} claims depend on the version.
Click a cell for its counts and the real error text; a dashed cell is not the scenario's
expectation (it moved). Highlighted versions differ from E1. A cell ending in (= En), in
italics, was not run in its column: it is carried from En, which ran it (see the notes
under the legend).</p>
{_legend(matrix)}
<div class="filters">{filters}</div>
<table id="matrix"><thead><tr>{"".join(f"<th>{escape(h)}</th>" for h in head)}</tr></thead>
<tbody>{"".join(body)}</tbody></table>
<script>{SCRIPT}</script>
</body></html>
"""
