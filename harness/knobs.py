"""Knobs: the typed, declared settings a scenario app reads from a variant's config.

Responsibility: one vocabulary for "what a variant may set". A scenario app
declares each knob it reads (name, type, default, one line of meaning); the worker
refuses, at import, a config that names a knob the app does not declare or gives
one a value of the wrong type, so a misspelled knob is an error, never a silent
fall-back to a default. The values in force (defaults included) are what the
harness records in ``results.json`` and shows in the HTML report.

Pure logic, shared by the worker side (:mod:`harness.task_support`) and the
harness side; imports nothing heavier than the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class KnobError(ValueError):
    """A variant's config does not fit the knobs its app declares."""


@dataclass(frozen=True)
class Knob:
    """One setting a scenario app reads.

    Args:
        name: the key in ``Variant.config``.
        type: the accepted type (or types); ``None`` is always accepted as "not set".
        default: the value when the variant does not set it.
        meaning: one line for the reader of the app and of the report.
        choices: the only values allowed, when the knob names one of a few behaviours.
    """

    name: str
    type: type | tuple[type, ...]
    default: Any
    meaning: str
    choices: tuple[Any, ...] = ()


def declare(*groups: Iterable[Knob] | Knob) -> tuple[Knob, ...]:
    """Knobs from single knobs and groups of knobs, refusing a name declared twice."""
    knobs: list[Knob] = []
    for group in groups:
        knobs.extend([group] if isinstance(group, Knob) else group)
    names = [k.name for k in knobs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise KnobError(f"knobs declared twice: {', '.join(repeated)}")
    return tuple(knobs)


def effective(declared: Iterable[Knob], config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Every declared knob's value in force: the config's, else the default.

    Raises:
        KnobError: the config names an undeclared knob, or a value has the wrong type.
    """
    known = {k.name: k for k in declared}
    unknown = sorted(set(config) - set(known))
    if unknown:
        listing = "; ".join(f"{k.name} ({k.meaning})" for k in known.values()) or "(none)"
        raise KnobError(
            f"{where}: the variant's config sets {', '.join(map(repr, unknown))}, which this "
            f"app does not read. Check the spelling against its knobs: {listing}.")
    values: dict[str, Any] = {}
    for name, knob in known.items():
        value = config.get(name, knob.default)
        # bool is an int: a True where a number is expected is a mistake, not a 1.
        wrong_bool = isinstance(value, bool) and bool not in _types(knob.type)
        if value is not None and (wrong_bool or not isinstance(value, knob.type)):
            raise KnobError(
                f"{where}: knob {name!r} is {value!r} ({type(value).__name__}), but the app "
                f"reads it as {_type_names(knob.type)} ({knob.meaning}).")
        if value is not None and knob.choices and value not in knob.choices:
            raise KnobError(
                f"{where}: knob {name!r} is {value!r}; it takes one of "
                f"{', '.join(map(repr, knob.choices))} ({knob.meaning}).")
        values[name] = value
    return values


def _types(spec: type | tuple[type, ...]) -> tuple[type, ...]:
    return spec if isinstance(spec, tuple) else (spec,)


def _type_names(spec: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _types(spec))
