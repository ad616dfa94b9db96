"""Knobs: a variant's config is checked against what its app declares."""

from __future__ import annotations

import pytest

from harness.knobs import Knob, KnobError, declare, effective
from harness.matrix import render_html

KNOBS = declare(
    Knob("pool", str, "default", "the pool", choices=("default", "null")),
    Knob("hold_s", (int, float), 1.0, "seconds held"),
    Knob("pre_ping", bool, False, "test at checkout"),
    Knob("pool_size", int, None, "pool size"),
)


def test_defaults_fill_what_the_config_leaves_out():
    assert effective(KNOBS, {"pool": "null"}, "s / v") == {
        "pool": "null", "hold_s": 1.0, "pre_ping": False, "pool_size": None}


def test_a_misspelled_knob_is_refused_with_the_known_ones():
    with pytest.raises(KnobError) as err:
        effective(KNOBS, {"pre-ping": True}, "loop-bound-pool / pre-ping")
    text = str(err.value)
    assert "loop-bound-pool / pre-ping" in text and "'pre-ping'" in text
    assert "pre_ping (test at checkout)" in text and "pool (the pool)" in text


def test_a_value_of_the_wrong_type_or_outside_the_choices_is_refused():
    with pytest.raises(KnobError, match="hold_s.*int or float"):
        effective(KNOBS, {"hold_s": "1"}, "w")
    assert _refused(KNOBS, {"pool_size": True}), "True is not a pool size"
    with pytest.raises(KnobError, match="one of 'default', 'null'"):
        effective(KNOBS, {"pool": "nul"}, "w")
    assert effective(KNOBS, {"pool_size": None}, "w")["pool_size"] is None  # None is unset


def _refused(knobs, config) -> bool:
    try:
        effective(knobs, config, "w")
    except KnobError:
        return True
    return False


def test_a_knob_declared_twice_is_an_error():
    with pytest.raises(KnobError, match="declared twice: pool"):
        declare(KNOBS, Knob("pool", str, None, "again"))


def test_the_html_cell_shows_the_knobs_in_force():
    text = render_html._knob_text({"pool": "null", "hold_s": 1.0, "steps": ["asyncio.run"]})
    assert text == 'pool="null", hold_s=1.0, steps=["asyncio.run"]'
