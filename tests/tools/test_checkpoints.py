"""Safe checkpoint loading (`hf_medmamba.tools.checkpoints`): ``weights_only`` with numpy values and yacs configs
allowed, custom pickled objects only with ``trust_pickle``, safetensors files, and the state dict unwrapped from the
training-state layouts."""

import collections
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from hf_medmamba.tools.checkpoints import load_checkpoint, unwrap_state_dict
from hf_medmamba.tools.errors import ConversionError

from ..conftest import run_script


class NotAState:
    """A custom object a training script might pickle (unpickling it needs this class: code from the file's source)."""

    def __init__(self, value):
        self.value = value


@pytest.fixture
def fake_yacs(monkeypatch):
    """A ``yacs.config.CfgNode`` stand-in to pickle a VMamba-style training config (yacs is not installed)."""
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, data=None):
            super().__init__(data or {})
            self.__dict__["__immutable__"] = False

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    return CfgNode


def test_numpy_scalars_and_yacs_configs_load_with_weights_only(tmp_path, fake_yacs, monkeypatch):
    import numpy as np

    weights = {"w": torch.ones(2)}
    config = fake_yacs({"MODEL": fake_yacs({"TYPE": "vssm", "DEPTHS": [2, 2, 27, 2]}), "SEED": 0})
    state = {"model": weights, "max_accuracy": np.float64(83.5), "epoch": np.int64(238), "config": config}
    torch.save(state, tmp_path / "train_state.pth")
    monkeypatch.delitem(sys.modules, "yacs.config")  # loading must not need (or import) yacs
    loaded = load_checkpoint(tmp_path / "train_state.pth")
    assert loaded["max_accuracy"] == 83.5 and loaded["epoch"] == 238
    assert type(loaded["config"]) is collections.OrderedDict and loaded["config"]["MODEL"]["TYPE"] == "vssm"
    assert "yacs.config" not in sys.modules
    torch.testing.assert_close(unwrap_state_dict(loaded)[0]["w"], weights["w"])


def test_custom_objects_need_trust_pickle(tmp_path, capsys):
    torch.save({"model": {"w": torch.ones(2)}, "extra": NotAState(3)}, tmp_path / "custom.pth")
    with pytest.raises(ConversionError) as info:
        load_checkpoint(tmp_path / "custom.pth")
    message = str(info.value)
    assert "NotAState" in message and "--trust-pickle" in message and "run code" in message
    loaded = load_checkpoint(tmp_path / "custom.pth", trust_pickle=True)
    assert loaded["extra"].value == 3
    assert "weights_only=False" in capsys.readouterr().err
    status, _, stderr = run_script("convert_medmamba", [tmp_path / "custom.pth", tmp_path / "out"], capsys)
    assert status == 1 and "--trust-pickle" in stderr


def test_safetensors_and_wrapped_checkpoints(tmp_path):
    weights = {"layers.0.blocks.0.ln_1.weight": torch.ones(2), "head.weight": torch.zeros(3, 2)}
    save_file(weights, tmp_path / "w.safetensors")
    assert set(load_checkpoint(tmp_path / "w.safetensors")) == set(weights)
    ema = {k: v + 1 for k, v in weights.items()}
    training = {"model": weights, "model_ema": ema, "optimizer": {"state": {}}, "epoch": 3}
    assert unwrap_state_dict(training)[1] == "model"
    state, entry = unwrap_state_dict(training, ema=True)
    assert entry == "model_ema" and torch.equal(state["head.weight"], ema["head.weight"])
    latest = {"model_state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 10, "min_loss": 0.1}
    state, entry = unwrap_state_dict(latest)
    assert entry == "model_state_dict" and set(state) == set(weights)
    with pytest.raises(ConversionError, match="'model_ema' entry, but the checkpoint has none"):
        unwrap_state_dict({"model": weights}, ema=True)
    with pytest.raises(ConversionError, match="cannot find the weights"):
        unwrap_state_dict({"epoch": 3, "optim": {}})
    with pytest.raises(ConversionError, match="not a state dict"):
        unwrap_state_dict(torch.nn.Linear(2, 2))
    with pytest.raises(ConversionError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
