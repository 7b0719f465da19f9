import pytest

from dlmi import DLMIConfig
from dlmi.errors import UsageError
from dlmi.inversion.config_builder import build_config


def test_defaults_follow_table_5():
    cfg = DLMIConfig()
    assert (cfg.samples, cfg.lr, cfg.tau0, cfg.temperature, cfg.teacher_forcing) == (
        8, 0.1, 100.0, "decoupled", True)
    assert (cfg.prompt_length, cfg.steps, cfg.eval_every, cfg.init_std) == (20, 256, 8, 1.0)


@pytest.mark.parametrize("field,value,text", [
    ("prompt_length", 0, "--prompt-length"),
    ("steps", 0, "--steps"),
    ("samples", 0, "--samples"),
    ("lr", 0.0, "--lr"),
    ("tau0", -1.0, "--tau0"),
    ("temperature", "warm", "decoupled"),
    ("budgets", (300,), "--steps"),
])
def test_bad_values_say_what_to_change(field, value, text):
    with pytest.raises(UsageError, match=text.replace("-", r"\-")):
        DLMIConfig(**{field: value})


def test_unknown_option_is_rejected_with_the_method_name():
    with pytest.raises(UsageError, match="random"):
        build_config("random", overrides={"tau0": 3.0})


def test_builtin_names_are_the_registered_methods():
    from dlmi.methods import registry

    registry._load_builtin()
    assert set(registry.BUILTIN) == set(registry._METHODS)
    for name, module in registry.BUILTIN.items():
        assert registry.get_method(name).__module__ == f"dlmi.methods.{module}"


def test_an_optional_tuple_option_keeps_its_items():
    from dlmi.inversion.config_builder import build_config

    cfg = build_config("gcg", overrides={"init_prompt": [40, 41]})
    assert cfg.init_prompt == (40, 41)
    assert build_config("gcg", overrides={"init_prompt": "none"}).init_prompt is None
