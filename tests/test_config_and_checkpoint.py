import datetime
import zipfile
from dataclasses import dataclass

import pytest
import torch

from offtune.errors import OfftuneError
from offtune.policies.checkpoint import load_checkpoint, save_checkpoint
from offtune.policies.config import apply_overrides, config_from_dict, config_to_dict, parse_assignments
from offtune.policies.iql import IQLConfig
from offtune.policies.misa import MISAConfig
from offtune.policies.spot import SPOTConfig


@dataclass
class ToyConfig:
    learning_rate: float = 3e-4
    hidden_dims: tuple[int, ...] = (256, 256)
    online_discount: float | None = None
    use_layer_norm: bool = False
    steps: int = 10


def test_overrides_are_typed():
    config = apply_overrides(ToyConfig(), parse_assignments(
        ["learning_rate=1e-3", "hidden_dims=64,64", "online_discount=0.995", "use_layer_norm=true", "steps=1e3"]
    ))
    assert config == ToyConfig(1e-3, (64, 64), 0.995, True, 1000)
    assert apply_overrides(ToyConfig(), {"hidden_dims": "[32, 16]"}).hidden_dims == (32, 16)
    assert apply_overrides(ToyConfig(), {"hidden_dims": 8}).hidden_dims == (8,)
    assert config_from_dict(ToyConfig, config_to_dict(config)) == config


def test_unknown_key_suggests_and_bad_value_names_the_type():
    with pytest.raises(OfftuneError, match="Did you mean: learning_rate"):
        apply_overrides(ToyConfig(), {"learning_rat": "1"})
    with pytest.raises(OfftuneError, match="expected a value of type float"):
        apply_overrides(ToyConfig(), {"learning_rate": "fast"})
    with pytest.raises(OfftuneError, match="key=value"):
        parse_assignments(["learning_rate"])


def minimal_payload() -> dict:
    return {"algo": "iql", "config": {}, "dataset": {}, "normalizer": {}, "reward_transform": {},
            "agent": {"w": torch.ones(3)}}


@pytest.mark.parametrize(
    ("config_cls", "setting", "message"),
    [
        (IQLConfig, {"batch_size": "-5"}, "batch_size must be at least 1, got -5"),
        (IQLConfig, {"hidden_dims": "256,0"}, r"hidden_dims must be at least 1, got \(256, 0\)"),
        (IQLConfig, {"expectile": "2"}, "expectile must be between 0.0 and 1.0, got 2.0"),
        (SPOTConfig, {"policy_freq": "0"}, "policy_freq must be at least 1"),
        (SPOTConfig, {"online_discount": "1.5"}, "online_discount must be between"),
        (MISAConfig, {"n_actions": "0"}, "n_actions must be at least 1"),
        (MISAConfig, {"temperature": "0"}, "temperature must be positive, got 0.0"),
        (MISAConfig, {"dataset_action_clip": "0"}, "dataset_action_clip must be positive"),
        (IQLConfig, {"actor_lr": "nan"}, "actor_lr must be a finite number, got nan"),
        (IQLConfig, {"critic_lr": "inf"}, "critic_lr must be a finite number, got inf"),
        (IQLConfig, {"log_std_min": "5"}, "log_std_min must be below log_std_max, got 5.0 and 2.0"),
        (IQLConfig, {"hidden_dims": "[256,abc]"}, "hidden_dims=.256,abc.: expected a comma-separated list of int"),
        (IQLConfig, {"batch_size": "inf"}, "batch_size=inf: expected a value of type int"),
        (IQLConfig, {"batch_size": "2.5e0"}, "batch_size=2.5e0: expected a value of type int"),
    ],
)
def test_out_of_range_settings_are_refused_by_name(config_cls, setting, message):
    with pytest.raises(OfftuneError, match=message):
        apply_overrides(config_cls(), setting)


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "a" / "final.pt", minimal_payload())
    assert torch.load(path, weights_only=True)["format"] == "offtune-checkpoint"
    assert torch.equal(load_checkpoint(path)["agent"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["final.pt"]


def test_wrong_files_get_clear_errors(tmp_path):
    with pytest.raises(OfftuneError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    path = save_checkpoint(tmp_path / "good.pt", minimal_payload())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OfftuneError, match="truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": torch.zeros(1)}, foreign)
    with pytest.raises(OfftuneError, match="not an offtune checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(OfftuneError, match="not a file written by torch.save"):
        load_checkpoint(text)
    other_zip = tmp_path / "policy.zip"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("data", "{}")
    with pytest.raises(OfftuneError, match="a zip archive, but not one torch.save wrote"):
        load_checkpoint(other_zip)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "offtune-checkpoint", "when": datetime.date(2026, 1, 1)}, pickled)
    with pytest.raises(OfftuneError, match=r"^\S+ is not an offtune checkpoint: it holds Python objects[^\n]*$"):
        load_checkpoint(pickled)

