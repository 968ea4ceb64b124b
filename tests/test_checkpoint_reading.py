import argparse

import pytest
import torch

from monai_ext.legacy import LegacyCheckpointError, check_state_dict_keys, read_state_dict


def _weights():
    return {"conv.weight": torch.randn(2, 1, 3, 3), "conv.bias": torch.randn(2)}


def test_reads_file_and_unwraps_state_dict_and_module_prefix(tmp_path):
    weights = _weights()
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 3}, path)
    loaded = read_state_dict(path)
    assert sorted(loaded) == sorted(weights)
    for key, value in weights.items():
        assert torch.equal(loaded[key], value)


@pytest.mark.parametrize("wrapper", ["model", "network", "model_state_dict"])
def test_unwraps_other_wrappers_without_touching_the_input(wrapper):
    weights = _weights()
    wrapped = {wrapper: dict(weights)}
    loaded = read_state_dict(wrapped)
    assert sorted(loaded) == sorted(weights)
    assert wrapped == {wrapper: weights}
    loaded.pop("conv.bias")
    assert "conv.bias" in wrapped[wrapper]


def test_refuses_pickled_objects_naming_the_file(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _weights(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(LegacyCheckpointError, match="evil.pt: refused to load"):
        read_state_dict(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        read_state_dict(tmp_path / "nowhere.pt")


def test_nested_values_are_reported():
    with pytest.raises(LegacyCheckpointError, match="optimizer"):
        read_state_dict({"conv.weight": torch.zeros(1), "optimizer": {"lr": torch.tensor(1.0)}})


def test_check_keys_lists_every_problem_at_once():
    expected = {"a": (2, 2), "b": (3,), "c": (1,)}
    found = {"a": torch.zeros(2, 3), "b": torch.zeros(3), "d": torch.zeros(1)}
    with pytest.raises(LegacyCheckpointError) as err:
        check_state_dict_keys(expected, found, name="old.pt", hint="Try include_fc=False.")
    message = str(err.value)
    assert "old.pt does not fit the model" in message
    assert "missing keys (1): c" in message
    assert "unexpected keys (1): d" in message
    assert "a: checkpoint (2, 3), model (2, 2)" in message
    assert message.endswith("Try include_fc=False.")


def test_check_keys_accepts_a_match():
    check_state_dict_keys({"a": (2,)}, {"a": torch.zeros(2)})
