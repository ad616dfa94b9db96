"""Does the article's claim hold? Computed from observed results, never written down.

Responsibility: for each scenario and driver, compare the claim (the bad
variant fails with the quoted error; the article's fix clears it) with the
outcomes of the two variants it names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

HOLDS = "holds"
DIFFERENT_ERROR = "holds with a different error"
DOES_NOT_HOLD = "does not hold"
UNKNOWN = "unknown"
NOT_APPLICABLE = "n/a"
ARTICLE = "the article"


@dataclass(frozen=True)
class Verdict:
    scenario: str
    driver: str
    verdict: str
    detail: str
    source: str = ARTICLE  # who makes the claim


def claim_verdict(bad: Mapping[str, Any] | None, fixed: Mapping[str, Any] | None) -> tuple[str, str]:
    """The verdict and a one-line reason, from the bad and the fixed variant's results."""
    if bad is None or fixed is None:
        return UNKNOWN, "the bad or the fixed variant did not run"
    for run in (bad, fixed):
        if run["outcome"] == "N/A":
            return NOT_APPLICABLE, f"{run['variant']} is n/a: {run.get('reason', '')[:120]}"
        if run["outcome"] == "HARNESS_ERROR":
            return UNKNOWN, f"{run['variant']} was {run['outcome']}: {run.get('reason', '')[:120]}"
    claimed = bad["claim"].get("signature")
    seen = sorted(bad["tasks"]["by_signature"])
    fix_ok = fixed["outcome"] == "CLEAN"
    if not bad["claim"].get("bad_fails", True):  # the article says this configuration works
        if bad["outcome"] == "CLEAN":
            return HOLDS, f"{bad['variant']} works, as the article says"
        return DOES_NOT_HOLD, (f"the article says {bad['variant']} works; it was "
                               f"{bad['outcome']} ({', '.join(seen) or 'no signature'})")
    if bad["outcome"] != "REPRODUCED":
        return DOES_NOT_HOLD, (f"the bad configuration ({bad['variant']}) was {bad['outcome']}, "
                               f"not the quoted error")
    if not fix_ok:
        return DOES_NOT_HOLD, (f"the error reproduces, but the article's fix ({fixed['variant']}) "
                               f"was {fixed['outcome']}")
    if claimed is not None and claimed in seen:
        return HOLDS, f"{bad['variant']} fails with {claimed}; {fixed['variant']} is clean"
    if claimed is None and bad["claim"].get("source", ARTICLE) != ARTICLE:
        # A maintainers' recommendation quotes no error: that it fails, and that the
        # recommended fix clears it, is the whole claim.
        return HOLDS, (f"{bad['variant']} fails ({', '.join(seen) or 'no signature'}); "
                       f"{fixed['variant']}, the recommended fix, is clean")
    return DIFFERENT_ERROR, (f"{bad['variant']} fails with {', '.join(seen)}, not "
                             f"{claimed or 'the quoted error'}; {fixed['variant']} is clean")


def verdicts(results: Iterable[Mapping[str, Any]]) -> list[Verdict]:
    """One verdict per (scenario, driver) that has a claim."""
    by_key: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    claims: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in results:
        key = (r["scenario"], r["driver"])
        by_key.setdefault(key, {})[r["variant"]] = r
        if r.get("claim"):
            claims[key] = r["claim"]
    found = []
    for key in sorted(claims):
        claim = claims[key]
        runs = by_key[key]
        verdict, detail = claim_verdict(runs.get(claim["bad"]), runs.get(claim["fixed"]))
        found.append(Verdict(key[0], key[1], verdict, detail, claim.get("source", ARTICLE)))
    return found
