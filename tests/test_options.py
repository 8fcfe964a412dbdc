"""Each option is said once: the command line's flags and choices agree with PruneOptions (fast, no model)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from sparse24_onnx import choices
from sparse24_onnx.cli import build_parser
from sparse24_onnx.cli.optimize import options as cli_options
from sparse24_onnx.pipeline.options import CLI_FLAGS, PruneOptions


def _optimize_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["optimize"]


def test_every_option_has_a_flag_and_every_flag_an_option():
    fields = {f.name for f in dataclasses.fields(PruneOptions) if f.repr}
    args = _optimize_parser().parse_args(["in.onnx", "out.onnx"])
    mapped = cli_options(args)
    assert set(mapped) - {"spelling"} == fields
    flags = {opt for action in _optimize_parser()._actions for opt in action.option_strings}
    spelled = PruneOptions(spelling="cli")
    for name in fields:
        assert spelled.spell(name) in flags, name


def test_cli_defaults_are_the_library_defaults():
    args = _optimize_parser().parse_args(["in.onnx", "out.onnx"])
    mapped = cli_options(args)
    defaults = PruneOptions()
    for name, value in mapped.items():
        if name == "spelling":
            continue
        default = getattr(defaults, name)
        assert value == default or (not value and not default), (name, value, default)


CHOICES = [
    ("--method", choices.METHODS),
    ("--format", choices.FORMATS),
    ("--tc-shapes", choices.TC_SHAPES),
    ("--quantize", choices.QUANTIZE),
    ("--activation-calibration", choices.ACTIVATION_CALIBRATIONS),
]


@pytest.mark.parametrize(("flag", "values"), CHOICES)
def test_choices_come_from_one_place(flag, values):
    action = next(a for a in _optimize_parser()._actions if flag in a.option_strings)
    assert tuple(action.choices) == values


def test_python_callers_get_python_names():
    assert PruneOptions().spell("max_rel_error") == "max_rel_error="
    assert PruneOptions(spelling="cli").spell("validate") == CLI_FLAGS["validate"] == "--no-validate"
    assert PruneOptions().given("method", "admm") == "method='admm'"
    assert PruneOptions(spelling="cli").given("method", "admm") == "--method admm"
