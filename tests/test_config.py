"""The training configuration (fmnist.config): precedence and strictness, without Keras."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import run_cli
from fmnist.config import RECORDED_KEYS, TrainConfig
from fmnist.errors import ConfigError
from fmnist.models import model_names, model_preset


def test_precedence_is_defaults_preset_file_flags():
    preset = model_preset("cnn-fast")
    plain = TrainConfig.resolve("cnn-fast")
    assert plain.batch_size == preset.get("batch_size", TrainConfig().batch_size)
    assert plain.momentum == TrainConfig().momentum  # a default no preset touches
    from_file = TrainConfig.resolve("cnn-fast", {"batch_size": 77, "seed": 4})
    assert (from_file.batch_size, from_file.seed) == (77, 4)
    flagged = TrainConfig.resolve("cnn-fast", {"batch_size": 77, "seed": 4}, {"batch_size": 9, "seed": None})
    assert (flagged.batch_size, flagged.seed) == (9, 4)  # None: the flag was not given


def test_model_options_merge_key_by_key_over_the_preset():
    """One factory argument given keeps the preset's others (its stem, for cnn-fast); a
    key given again replaces that key alone, file < flags."""
    preset = model_preset("cnn-fast")["model_options"]
    assert TrainConfig.resolve("cnn-fast").model_options == preset
    file = {"model_options": {"dense": 64, "stem_width": 12}}
    flags = {"model_options": {"dense": 256}}
    merged = TrainConfig.resolve("cnn-fast", file, flags).model_options
    assert merged == {**preset, "stem_width": 12, "dense": 256}
    assert TrainConfig.resolve("mlp", None, {"model_options": {"hidden_units": 64}}).model_options \
        == {"hidden_units": 64}  # a preset without options
    with pytest.raises(ConfigError, match="model_options: 5 is not valid"):
        TrainConfig.resolve("cnn-fast", None, {"model_options": 5})


def test_a_runs_own_config_json_keeps_the_options_it_was_built_with():
    """A run's config.json (settings plus its record) rebuilds that run's model: options it
    did not name were the factory's defaults, not a later preset's."""
    saved = {**TrainConfig(model="cnn-fast").to_dict(), "versions": {"fmnist": "0.1.0"}}
    assert saved["model_options"] == {}
    assert TrainConfig.resolve("cnn-fast", saved).model_options == {}
    flagged = TrainConfig.resolve("cnn-fast", saved, {"model_options": {"dense": 64}})
    assert flagged.model_options == {"dense": 64}


@pytest.mark.parametrize("model", model_names())
def test_every_preset_is_a_valid_config(model):
    config = TrainConfig.resolve(model)
    assert config.model == model and set(model_preset(model)) <= set(vars(config))


@pytest.mark.parametrize("payload, words", [
    ({"optimiser": "adam"}, "unknown setting 'optimiser'"),
    ({"optimizer": "lamb"}, "optimizer: 'lamb' is not one of adam, adamw, sgd"),
    ({"schedule": "cosine"}, "schedule: 'cosine' is not one of constant, onecycle"),
    ({"precision": "fp16"}, "precision: 'fp16' is not one of"),
    ({"distribute": "ring"}, "distribute: 'ring' is not one of none, mirrored, multiworker"),
    ({"epochs": 0}, "epochs: 0 is not valid; it must be at least 1"),
    ({"epochs": 2.5}, "epochs: 2.5 is not valid"),
    ({"batch_size": True}, "batch_size: True is not valid"),
    ({"learning_rate": -1e-3}, "learning_rate: -0.001 is not valid; it must be above 0"),
    ({"learning_rate": float("nan")}, "learning_rate: nan is not valid"),
    ({"label_smoothing": 1.0}, "label_smoothing: 1.0 is not valid"),
    ({"ema": 1.5}, "ema: 1.5 is not valid"),
    ({"erase": 2}, "erase: 2 is not valid; it must be a probability"),
    ({"cutmix": -0.1}, "cutmix: -0.1 is not valid; it must be a probability"),
    ({"flip": "yes"}, "flip: 'yes' is not valid; it must be true or false"),
    ({"test_size": 20_000}, "test_size: 20000 is not valid; it must be 1 to 10000"),
    ({"split_seed": -1}, "split_seed: -1 is not valid; it must be 0 or more, or null"),
    ({"train_size": 59_000}, "train_size + val_size"),
    ({"model_options": [64]}, "model_options: [64] is not valid; it must be an object"),
    ({"distill_tta": True}, "distill_tta: true needs a teacher"),
    ({"time_budget": 60, "distribute": "multiworker"}, "a multi-worker run cannot take one"),
])
def test_unknown_keys_and_bad_values_are_named(payload, words):
    with pytest.raises(ConfigError) as raised:
        TrainConfig.resolve("mlp", payload, file_name="config file x.json")
    assert words in str(raised.value) and "\n" not in str(raised.value)


def test_a_runs_own_config_json_is_accepted_back():
    saved = {**TrainConfig().to_dict(), **{key: 1 for key in RECORDED_KEYS}}
    saved.update(versions={"fmnist": "0.1.0"})
    assert TrainConfig.resolve("mlp", saved).model == "mlp"


def test_every_setting_has_a_flag_and_every_flag_is_a_setting_or_run_control():
    """A setting lives in one place: TrainConfig. `fmnist train`'s flags derive from it;
    the only others steer the invocation and are named as such."""
    from fmnist.cli import build_parser
    from fmnist.cli.train import RUN_CONTROL

    commands = next(action for action in build_parser()._actions if action.dest == "command")
    train = commands.choices["train"]
    flags = {action.dest: action for action in train._actions if action.dest != "help"}
    settings = set(TrainConfig.model_fields)
    assert settings <= set(flags), f"settings without a flag: {settings - set(flags)}"
    assert set(flags) - settings - {"subparser"} == set(RUN_CONTROL)
    assert not settings & set(RUN_CONTROL)
    for name in settings:  # the help is the field's description, and no flag has a default
        assert flags[name].help == TrainConfig.model_fields[name].description
        assert flags[name].default is None, name


def test_every_setting_is_described_and_grouped():
    from fmnist.config import GROUPS

    for name, field in TrainConfig.model_fields.items():
        assert field.description and field.json_schema_extra["group"] in GROUPS, name


def test_a_searched_config_keeps_the_model_and_recipe_and_drops_the_run():
    from fmnist.config import searched_settings

    config = TrainConfig.for_model("cnn-fast", seed=3, train_size=500, tensorboard=True,
                                   split_seed=1, time_budget=60.0)
    kept = searched_settings(config)
    assert kept["model"] == "cnn-fast" and kept["flip"]
    assert kept["learning_rate"] == model_preset("cnn-fast")["learning_rate"]
    assert not {"seed", "split_seed", "train_size", "val_size", "test_size", "time_budget",
                "distribute", "cpu_replicas", "tensorboard", "tensorboard_histograms"} & set(kept)
    assert TrainConfig.from_json(kept, strict=True).seed == 0  # a valid config, run anew


def test_a_config_is_replaced_through_its_checks():
    config = TrainConfig(epochs=3)
    assert config.replace(epochs=5).epochs == 5 and config.epochs == 3
    with pytest.raises(ConfigError, match="epochs: 0 is not valid"):
        config.replace(epochs=0)


def test_the_config_module_imports_no_keras():
    script = "import sys, fmnist.config; print('keras' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_bad_config_file_is_a_usage_error_that_writes_nothing(tmp_path):
    config = tmp_path / "lamb.json"
    config.write_text(json.dumps({"optimizer": "lamb", "epochs": 1}))
    out = tmp_path / "run"
    result = run_cli("train", "--config", str(config), "--out", str(out))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "optimizer: 'lamb' is not one of adam, adamw, sgd" in result.stderr
    assert not out.exists()
    config.write_text(json.dumps({"epoch": 3}))  # a typo does not pass silently
    typo = run_cli("train", "--config", str(config), "--out", str(out))
    assert typo.returncode == 2 and "unknown setting 'epoch'" in typo.stderr and not out.exists()
