"""Seeding, device choice, pickle-free checkpoints, progress and the epoch log."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from monitor.errors import CheckpointError, ConfigError
from training.train_utils import (
    EpochLogger,
    load_checkpoint,
    load_state_strict,
    progress,
    resolve_device,
    save_checkpoint,
    seed_everything,
    sidecar_path,
)


def test_seed_everything_repeats_numpy_and_torch_draws():
    seed_everything(123)
    a = (np.random.rand(3), torch.rand(3))
    seed_everything(123)
    b = (np.random.rand(3), torch.rand(3))
    np.testing.assert_array_equal(a[0], b[0])
    assert torch.equal(a[1], b[1])
    seed_everything(124)
    assert not torch.equal(torch.rand(3), b[1])


def test_seed_everything_rejects_non_integer():
    with pytest.raises(ConfigError, match="'abc'"):
        seed_everything("abc")  # type: ignore[arg-type]


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1"])
def test_resolve_device_cuda_absent_is_a_clear_error(spec):
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device(spec)


def test_resolve_device_unknown_names_the_value():
    with pytest.raises(ConfigError, match="'tpu'"):
        resolve_device("tpu")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def test_checkpoint_roundtrip_keeps_tensors_and_meta(tmp_path):
    model = _model()
    path = tmp_path / "run" / "model.safetensors"
    meta = {"recipe": "unit", "seed": 7, "hyper": {"lr": np.float32(0.5)}, "loss": [3.0, 2.0]}
    assert save_checkpoint(path, model.state_dict(), meta) == path
    side = sidecar_path(path)
    assert side.name == "model.safetensors.json"
    stored = json.loads(side.read_text())
    assert stored["recipe"] == "unit" and stored["seed"] == 7 and stored["loss"] == [3.0, 2.0]
    assert stored["hyper"]["lr"] == 0.5
    assert {"torch", "numpy", "python"} <= set(stored["versions"])

    state, meta2 = load_checkpoint(path)
    assert meta2 == stored
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
    fresh = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    load_state_strict(fresh, state, str(path))
    x = torch.randn(5, 4)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    # atomic writes leave no temp files behind
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, side.name]


def test_checkpoint_is_not_pickle(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _model().state_dict(), {})
    head = path.read_bytes()[:16]
    assert not head.startswith(b"\x80")  # pickle protocol marker
    assert not head.startswith(b"PK")  # torch.save zip


def test_checkpoint_missing_or_damaged_files_name_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(CheckpointError, match="m.safetensors: checkpoint file not found"):
        load_checkpoint(path)
    save_checkpoint(path, _model().state_dict(), {"seed": 1})
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="tensor_sha256"):
        load_checkpoint(path)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="m.safetensors.json"):
        load_checkpoint(path)


def test_checkpoint_garbage_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    sidecar_path(path).write_text("{}")
    with pytest.raises(CheckpointError, match="g.safetensors"):
        load_checkpoint(path)
    sidecar_path(path).write_text("[1, 2")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_checkpoint_rejects_unserialisable_meta_and_non_tensors(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "a.safetensors", _model().state_dict(), {"bad": object()})
    with pytest.raises(CheckpointError, match="'w'"):
        save_checkpoint(tmp_path / "b.safetensors", {"w": [1.0]}, {})  # type: ignore[dict-item]


def test_load_state_strict_names_missing_unexpected_and_shapes():
    model = _model()
    state = dict(model.state_dict())
    state.pop("0.weight")
    state["extra"] = torch.zeros(1)
    state["2.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as err:
        load_state_strict(_model(), state, "ckpt.safetensors")
    msg = str(err.value)
    assert "ckpt.safetensors" in msg and "0.weight" in msg and "extra" in msg
    assert "2.bias: file (5,) vs model (2,)" in msg


def test_progress_off_a_terminal_logs_one_line_with_the_loss(caplog, monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a TTY even under `pytest -s`
    caplog.set_level(logging.INFO, logger="training.train_utils")
    bar = progress(range(3), "epoch 1/2")
    seen = []
    for i in bar:
        seen.append(i)
        bar.set_postfix(loss=1.0 / (i + 1))
    assert seen == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "epoch 1/2: 3 steps" in lines[0] and "loss=0.3333" in lines[0]


def test_progress_disabled_is_silent(caplog):
    caplog.set_level(logging.DEBUG)
    bar = progress([1, 2], "quiet", enabled=False)
    assert list(bar) == [1, 2]
    bar.set_postfix(loss=1.0)
    assert not caplog.records


def test_progress_forced_bar_is_tqdm():
    bar = progress([1, 2], "bar", force_bar=True)
    assert hasattr(bar, "set_postfix") and list(bar) == [1, 2]
    assert type(bar).__module__.startswith("tqdm")


def test_epoch_logger_weights_batches_by_size():
    log = EpochLogger()
    log.update(n=2, loss=1.0)
    log.update(n=6, loss=3.0)
    row = log.end_epoch(lr=0.1)
    assert row["loss"] == pytest.approx(2.5) and row["lr"] == 0.1
    log.update(n=1, loss=4.0)
    log.end_epoch(lr=0.05)
    assert log.history["loss"] == [2.5, 4.0] and log.history["lr"] == [0.1, 0.05]
    assert log.epochs == 2 and len(log.history["seconds"]) == 2
    json.dumps(log.history)  # ready for checkpoint meta
