"""Variant syntax of ``nnunet-efficient benchmark --strategies``."""

import pytest

from nnunet_efficient.benchmark.runner import Variant, variant_folder
from nnunet_efficient.errors import EfficientError


def test_plain_strategy_has_no_options():
    variant = Variant.parse("sliding_window")
    assert (variant.strategy, dict(variant.options), variant.tta, variant.step) == ("sliding_window", {}, None, None)
    assert variant.report_options() == {}
    assert variant_folder("sliding_window", {}) == "sliding_window"


def test_tta_and_step_are_predictor_keys_of_any_strategy():
    variant = Variant.parse("sliding_window:tta=0,step=0.25,bf16=1")
    assert (variant.tta, variant.step, variant.bf16) == (False, 0.25, True)
    assert variant.report_options() == {"tta": 0, "step": 0.25, "bf16": 1}
    assert variant_folder("sliding_window", variant.report_options()) == "sliding_window__bf16=1__step=0.25__tta=0"


@pytest.mark.parametrize("spec", ["sparse:margin=2", "sparse:sparse_margin=2"])
def test_strategy_options_with_or_without_the_strategy_prefix(spec):
    variant = Variant.parse(spec)
    assert dict(variant.options) == {"sparse_margin": 2}
    assert variant.report_options() == {"margin": 2}
    assert variant.build().settings == {"sparse_margin": 2}


def test_command_line_options_are_defaults_that_a_variant_overrides():
    defaults = {"sparse_margin": 3}
    assert Variant.parse("sparse").build(defaults).settings == {"sparse_margin": 3}
    assert Variant.parse("sparse").report_options(defaults) == {"margin": 3}
    assert Variant.parse("sparse:margin=0").build(defaults).settings == {"sparse_margin": 0}
    # an option left at its default does not rename the variant
    assert Variant.parse("sparse").report_options({"sparse_margin": 4}) == {}


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown strategy 'nope'"),
    ("sparse:width=3", "'sparse' has no key 'width'; it accepts margin, tta, step, bf16, model"),
    ("sparse:margin=two", "expected int, got 'two'"),
    ("sliding_window:tta=maybe", "expected 0 or 1"),
    ("sliding_window:step=1.5", "must be in (0, 1]"),
    ("sliding_window:tta", "is not KEY=VALUE"),
])
def test_bad_variants_are_user_errors(spec, message):
    with pytest.raises(EfficientError) as error:
        Variant.parse(spec)
    assert message in str(error.value)


def test_model_key_runs_a_variant_on_a_named_model():
    variant = Variant.parse("nmsw:k=5,model=joint")
    assert variant.model == "joint" and dict(variant.options) == {"k": 5}
    assert variant.report_options() == {"k": 5, "model": "joint"}
    assert variant_folder("nmsw", variant.report_options()) == "nmsw__k=5__model=joint"
    assert Variant.parse("nmsw").model is None
