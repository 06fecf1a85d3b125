"""Config resolution: presets, YAML files, --key value overrides, type and range checks."""
import json

import pytest

from ditlab.config import PRESETS, TrainConfig, load_config, parse_overrides, resolve_config, save_config
from ditlab.errors import ConfigError


def test_preset_then_yaml_then_flags(tmp_path):
    yaml_file = tmp_path / "o.yaml"
    yaml_file.write_text("lr: 3.0e-4\nsteps: 77\ndepth: 3\n")
    c = resolve_config("mnist", yaml_file, parse_overrides(["--steps", "11", "--no-tensorboard", "--cfg_scale=1.5"]))
    assert c.lr == pytest.approx(3e-4)  # from YAML
    assert c.steps == 11  # flag beats YAML
    assert c.depth == 3
    assert c.tensorboard is False
    assert c.cfg_scale == 1.5
    assert c.hidden_size == PRESETS["mnist"]["hidden_size"]  # preset beats default


def test_every_preset_resolves():
    for name in PRESETS:
        overrides = {"data": "x"} if not PRESETS[name].get("data", True) else {}
        assert isinstance(resolve_config(name, overrides=overrides), TrainConfig)


def test_string_none_stays_a_string_for_str_fields():
    assert resolve_config("mnist", overrides={"autocast": "none"}).autocast == "none"
    assert resolve_config("mnist", overrides={"depth": "none"}).depth is None


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"stepz": 3}, "did you mean steps"),
        ({"steps": "many"}, "expects int"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"lr": -1}, "lr must be > 0"),
        ({"tensorboard": "maybe"}, "expects bool"),
        ({"autocast": "fp8"}, "autocast must be"),
        ({"process": "gan"}, "unknown process"),
        ({"cfg_scale": -2}, "cfg_scale must be >= 0"),
    ],
)
def test_bad_values_name_the_fix(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_config("mnist", overrides=overrides)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="mnist"):
        resolve_config("imagenet512")


def test_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config("mnist", bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_config("mnist", listy)


def test_flag_without_value():
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--lr"])


def test_round_trip(tmp_path):
    c = resolve_config("digits-tiny", overrides={"steps": 5, "flip": "true"})
    save_config(c, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == c
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 5


@pytest.mark.parametrize("tokens, want", [
    (["--grad_checkpointing"], -1), (["--grad_checkpointing", "14"], 14), (["--grad_checkpointing", "-1"], -1),
    (["--grad_checkpointing", "true"], -1), (["--grad_checkpointing=off"], 0), (["--no-grad_checkpointing"], 0),
    (["--grad_checkpointing", "1"], 1), (["--grad_checkpointing", "--steps", "3"], -1), ([], 0),
])
def test_grad_checkpointing_counts_blocks_and_takes_the_old_flag(tokens, want):
    assert resolve_config("mnist", overrides=parse_overrides(tokens)).grad_checkpointing == want


def test_runs_saved_with_boolean_grad_checkpointing_still_load(tmp_path):
    c = resolve_config("digits-tiny")
    save_config(c, tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    for old, new in ((True, -1), (False, 0), (3, 3)):
        (tmp_path / "config.json").write_text(json.dumps({**data, "grad_checkpointing": old}))
        assert load_config(tmp_path / "config.json").grad_checkpointing == new
    with pytest.raises(ConfigError, match="grad_checkpointing must be"):
        resolve_config("mnist", overrides={"grad_checkpointing": -2})
    with pytest.raises(ConfigError, match="expects int"):
        resolve_config("mnist", overrides={"grad_checkpointing": "some"})


def test_compile_and_compile_blocks_exclude_each_other():
    assert resolve_config("mnist", overrides=parse_overrides(["--compile_blocks"])).compile_blocks
    with pytest.raises(ConfigError, match="exclude each other"):
        resolve_config("mnist", overrides=parse_overrides(["--compile", "--compile_blocks"]))


def test_help_shows_the_optional_value_and_resumable_fields():
    from ditlab.commands.train import config_fields_help
    from ditlab.config import resumable_fields

    text = config_fields_help()
    assert "--grad_checkpointing [INT] (default 0) [resumable]" in text
    assert "--compile_blocks BOOL (default False) [resumable]" in text
    assert {"grad_checkpointing", "compile", "compile_blocks"} <= resumable_fields()
