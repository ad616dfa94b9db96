"""The compatibility matrix: many environments, one report, regression mode, sharding.

Data flows through the modules in this order:

    axes          matrix.toml / options -> the plan (baseline + one axis at a time, or all)
    versions      every version checked on the package index; an interpreter per Python;
                  a PgBouncer per PgBouncer version (local binary, else docker image)
    environments  one cached virtualenv per combination of Python and packages (uv, else
                  venv + pip); environments differing only in PgBouncer share one
    run           pytest scenarios/ in each environment, on its PgBouncer's backend, with
                  progress and time left
    merge         results.json files -> matrix.json (also for CI shards)
    table         rows and columns shared by the renderers
    render_md     matrix.md
    render_html   matrix.html (self-contained, filters, error text)
    diff          regression mode: cells whose outcome changed
    command       the order of the steps behind ``harness matrix`` and ``harness report``
"""

from __future__ import annotations

from harness.matrix.axes import AXES, Combination, MatrixSpec, load_toml, plan
from harness.matrix.diff import compare
from harness.matrix.merge import load_any, merge_paths

# The submodules keep their own names (harness.matrix.merge is a module, not the
# function of that name), so only functions with distinct names are re-exported.
__all__ = ["AXES", "Combination", "MatrixSpec", "compare", "load_any", "load_toml",
           "merge_paths", "plan"]
