"""CED: official key names and shapes, both checkpoint layouts, chunking, pooling, ONNX export.

Pretrained weights cannot be downloaded here, so the checkpoints are fabricated: random tensors
carrying exactly the official names and shapes (``ced_state_dict_names``), with the real
front-end buffers, saved as the original ``.pt`` and the Hugging Face ``model.safetensors``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from monitor.audio import frontend as fe
from monitor.errors import CheckpointError
from training.models.ced import (
    CED,
    CED_MIN_SAMPLES,
    CED_SIZES,
    ced_state_dict_names,
    load_ced_checkpoint,
)
from training.models.resnet import ResNetEncoder

SR = fe.SAMPLE_RATE


def _wave(seconds: float, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = int(round(seconds * SR))
    t = torch.arange(n) / SR
    tone = 0.3 * torch.sin(2 * math.pi * (300 + 200 * torch.arange(batch)[:, None]) * t)
    return (0.05 * torch.randn(batch, n, generator=g) + tone).float()


def fake_official_state(size: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official ``.pt`` names/shapes, real front-end buffers."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in ced_state_dict_names(size, "pt").items():
        if name == "front_end.0.spectrogram.window":
            state[name] = torch.from_numpy(fe.hann_window(512))
        elif name == "front_end.0.mel_scale.fb":
            state[name] = torch.from_numpy(fe.mel_filterbank(512, 64, f_max=8000.0))
        elif name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(12345, dtype=torch.long)
        elif name.endswith("running_mean"):
            state[name] = -40.0 + 5.0 * torch.randn(shape, generator=g)
        elif name.endswith("running_var"):
            state[name] = 200.0 + 100.0 * torch.rand(shape, generator=g)
        elif name.endswith("weight") and len(shape) == 1:  # LayerNorm / BatchNorm scale
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[name] = 0.05 * torch.randn(shape, generator=g)
    return state


def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The HF conversion as the mispeech converter does it (drop front_end, rename)."""
    out = {}
    for k, v in state.items():
        if k.startswith("front_end."):
            continue
        k = k.replace("init_bn.1.", "init_bn.")
        out[k if k.startswith("outputlayer.") else "encoder." + k] = v.contiguous()
    return out


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ced_tiny")
    state = fake_official_state("tiny")
    torch.save({"model": state}, d / "audiotransformer_tiny.pt")
    save_file(to_hf(state), str(d / "model.safetensors"))
    return state, d / "audiotransformer_tiny.pt", d / "model.safetensors"


@pytest.fixture(scope="module")
def tiny(tiny_files):
    return load_ced_checkpoint(tiny_files[1])


# -- names and shapes ------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", "mini"])
def test_module_names_equal_official(size):
    model = CED(size)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == ced_state_dict_names(size, "pt")
    assert model.embed_dim == CED_SIZES[size][0] and model.size == size


@pytest.mark.parametrize("size", ["small", "base"])
def test_module_names_equal_official_large(size):
    with torch.device("meta"):  # no memory, no init time
        model = CED(size)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == ced_state_dict_names(size, "pt")


def test_official_names_spot_checks():
    pt = ced_state_dict_names("mini", "pt")
    assert pt["front_end.0.mel_scale.fb"] == (257, 64)
    assert pt["init_bn.1.running_var"] == (64,) and pt["init_bn.1.num_batches_tracked"] == ()
    assert pt["patch_embed.proj.weight"] == (256, 1, 16, 16)
    assert pt["time_pos_embed"] == (1, 256, 1, 63) and pt["freq_pos_embed"] == (1, 256, 4, 1)
    assert pt["blocks.11.attn.qkv.weight"] == (768, 256)
    assert pt["blocks.0.mlp.fc1.weight"] == (1024, 256)
    assert pt["outputlayer.1.weight"] == (527, 256)
    hf = ced_state_dict_names("mini", "hf")
    assert "encoder.init_bn.weight" in hf and "encoder.blocks.0.attn.qkv.weight" in hf
    assert "outputlayer.1.bias" in hf and "encoder.outputlayer.1.bias" not in hf
    assert not any("front_end" in k for k in hf)
    assert len(hf) == len(pt) - 2


@pytest.mark.parametrize(
    "size,millions", [("tiny", 5.5), ("mini", 9.7), ("small", 21.6), ("base", 85.7)]
)
def test_parameter_counts_match_paper(size, millions):
    names = ced_state_dict_names(size)
    params = sum(
        math.prod(s)
        for k, s in names.items()
        if not k.startswith("front_end.") and "running" not in k and "num_batches" not in k
    )
    assert round(params / 1e6, 1) == millions


# -- loading ---------------------------------------------------------------------------------


def test_pt_and_safetensors_give_identical_outputs(tiny_files):
    state, pt, st = tiny_files
    a, b = load_ced_checkpoint(pt), load_ced_checkpoint(st)
    assert a.size == b.size == "tiny" and not a.training
    x = _wave(2.0, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        torch.testing.assert_close(a.forward_logits(x), b.forward_logits(x), rtol=0, atol=0)
    loaded = a.state_dict()
    for k in ("blocks.5.attn.qkv.weight", "init_bn.1.running_mean", "outputlayer.1.bias"):
        torch.testing.assert_close(loaded[k], state[k], rtol=0, atol=0)


def test_plain_pt_without_model_wrapper(tmp_path, tiny_files):
    state = tiny_files[0]
    torch.save(state, tmp_path / "plain.pt")
    model = load_ced_checkpoint(tmp_path / "plain.pt", size="tiny")
    torch.testing.assert_close(model.time_pos_embed, state["time_pos_embed"], rtol=0, atol=0)


def test_pt_front_end_buffers_are_used(tmp_path, tiny_files):
    state = dict(tiny_files[0])
    state["front_end.0.mel_scale.fb"] = state["front_end.0.mel_scale.fb"] * 2.0  # +3 dB
    torch.save(state, tmp_path / "fb.pt")
    model = load_ced_checkpoint(tmp_path / "fb.pt")
    torch.testing.assert_close(model.front_end[0].mel_scale.fb, state["front_end.0.mel_scale.fb"])
    x = _wave(1.0)
    # the mel power doubles (+3 dB, which level normalisation then takes out again)
    p_loaded = model.front_end[0](x)
    p_default = CED("tiny").front_end[0](x)
    torch.testing.assert_close(p_loaded, 2.0 * p_default, rtol=1e-5, atol=0)


def test_mini_loads_and_infers_size(tmp_path):
    state = fake_official_state("mini", seed=1)
    save_file(to_hf(state), str(tmp_path / "model.safetensors"))
    model = load_ced_checkpoint(tmp_path / "model.safetensors", embed_blocks=(7, 10))
    assert model.size == "mini" and model.embed_dim == 256 and model.embed_blocks == (7, 10)
    with torch.no_grad():
        assert model(_wave(1.0)).shape == (1, 256)


def test_safetensors_recognised_by_content(tmp_path, tiny_files):
    save_file(to_hf(tiny_files[0]), str(tmp_path / "ced_tiny.bin"))
    assert load_ced_checkpoint(tmp_path / "ced_tiny.bin").size == "tiny"


def test_hf_without_num_batches_tracked_loads(tmp_path, tiny_files):
    hf = to_hf(tiny_files[0])
    del hf["encoder.init_bn.num_batches_tracked"]
    save_file(hf, str(tmp_path / "model.safetensors"))
    assert load_ced_checkpoint(tmp_path / "model.safetensors").size == "tiny"


def _write_pt(path, state):
    torch.save(state, path)
    return path


def test_missing_key_is_named(tmp_path, tiny_files):
    state = dict(tiny_files[0])
    del state["blocks.3.mlp.fc1.bias"]
    path = _write_pt(tmp_path / "missing.pt", state)
    with pytest.raises(CheckpointError, match=r"missing keys: \[blocks\.3\.mlp\.fc1\.bias\]") as e:
        load_ced_checkpoint(path)
    assert str(path) in str(e.value)


def test_missing_key_in_safetensors_uses_hf_layout(tmp_path, tiny_files):
    hf = to_hf(tiny_files[0])
    del hf["encoder.norm.weight"]
    save_file(hf, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"Hugging Face.*missing keys: \[norm\.weight\]"):
        load_ced_checkpoint(tmp_path / "model.safetensors")


def test_unexpected_key_is_named(tmp_path, tiny_files):
    state = dict(tiny_files[0])
    state["blocks.12.norm1.weight"] = torch.ones(192)
    path = _write_pt(tmp_path / "extra.pt", state)
    with pytest.raises(CheckpointError, match=r"unexpected keys: \[blocks\.12\.norm1\.weight\]"):
        load_ced_checkpoint(path)


def test_wrong_shape_names_both_shapes(tmp_path, tiny_files):
    state = dict(tiny_files[0])
    state["time_pos_embed"] = torch.zeros(1, 192, 1, 62)
    path = _write_pt(tmp_path / "shape.pt", state)
    with pytest.raises(CheckpointError) as e:
        load_ced_checkpoint(path)
    msg = str(e.value)
    assert "time_pos_embed: checkpoint (1, 192, 1, 62) vs model (1, 192, 1, 63)" in msg


def test_explicit_wrong_size_reports_shapes(tiny_files):
    with pytest.raises(CheckpointError) as e:
        load_ced_checkpoint(tiny_files[1], size="mini")
    msg = str(e.value)
    assert "does not match CED-mini" in msg
    assert "shapes are those of CED-tiny, but size='mini' was asked for" in msg
    assert "patch_embed.proj.bias: checkpoint (192,) vs model (256,)" in msg


def test_resnet_checkpoint_is_rejected(tmp_path):
    path = _write_pt(tmp_path / "resnet.pt", ResNetEncoder().state_dict())
    with pytest.raises(CheckpointError) as e:
        load_ced_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and "not a CED checkpoint" in msg
    assert "patch_embed.proj.weight" in msg and "conv1.weight" in msg


def test_unknown_embed_dim_is_rejected(tmp_path, tiny_files):
    state = dict(tiny_files[0])
    state["patch_embed.proj.bias"] = torch.zeros(100)
    path = _write_pt(tmp_path / "dim.pt", state)
    with pytest.raises(CheckpointError, match=r"patch_embed\.proj\.bias.*\(100,\)"):
        load_ced_checkpoint(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_ced_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt: neither a torch checkpoint"):
        load_ced_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_ced_checkpoint(tmp_path / "junk.safetensors")
    torch.save({"model": {"a": [1, 2, 3]}}, tmp_path / "lists.pt")
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        load_ced_checkpoint(tmp_path / "lists.pt")


def test_pickled_objects_are_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_ced_checkpoint(tmp_path / "evil.pt")


# -- forward ---------------------------------------------------------------------------------


def _reference(
    state: dict[str, torch.Tensor], wave: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent functional CED forward straight from the official names (<= 1012 frames).

    Uses torch.stft, F.layer_norm and scaled_dot_product_attention instead of the model's code.
    Returns the logits and block 0's output tokens.
    """
    d = state["patch_embed.proj.bias"].shape[0]
    heads = {dim: h for dim, h in CED_SIZES.values()}[d]
    spec = torch.stft(
        wave, 512, 160, window=state["front_end.0.spectrogram.window"], center=True,
        pad_mode="reflect", return_complex=True,
    ).abs() ** 2  # fmt: skip
    # sonitor's one deviation from CED: the filterbank limited to BAND_EDGE_HZ (frontend.py)
    fb = torch.from_numpy(fe.band_limited(state["front_end.0.mel_scale.fb"].numpy()))
    mel = torch.einsum("bft,fm->bmt", spec, fb)
    db = 10 * torch.log10(mel.clamp(min=1e-10))
    db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - 120)
    # level normalisation: each clip's mean dB moved to that of pink noise at -25 dBFS
    db = db - db.mean(dim=(1, 2), keepdim=True) + fe.level_reference_db(
        n_fft=512, hop=160, n_mels=64, htk=True, norm=None, top_db=120.0, amin=1e-10,
        f_min=0.0, f_max=8000.0, win_length=512,
    )  # fmt: skip
    bn = {
        k: state[f"init_bn.1.{k}"][:, None]
        for k in ("weight", "bias", "running_mean", "running_var")
    }
    x = (db - bn["running_mean"]) / torch.sqrt(bn["running_var"] + 1e-5) * bn["weight"] + bn["bias"]
    x = F.conv2d(x[:, None], state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], 16)
    x = x + state["time_pos_embed"][..., : x.shape[-1]] + state["freq_pos_embed"]
    b, _, nf, nt = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, nf * nt, d)  # (f t) order
    for i in range(12):
        p = lambda n, i=i: state[f"blocks.{i}.{n}"]  # noqa: E731
        h = F.layer_norm(x, (d,), p("norm1.weight"), p("norm1.bias"), 1e-6)
        q, k, v = F.linear(h, p("attn.qkv.weight"), p("attn.qkv.bias")).chunk(3, dim=-1)
        split = lambda t: t.reshape(b, -1, heads, d // heads).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(split(q), split(k), split(v))
        x = x + F.linear(
            a.transpose(1, 2).reshape(b, -1, d), p("attn.proj.weight"), p("attn.proj.bias")
        )
        h = F.layer_norm(x, (d,), p("norm2.weight"), p("norm2.bias"), 1e-6)
        h = F.linear(
            F.gelu(F.linear(h, p("mlp.fc1.weight"), p("mlp.fc1.bias"))),
            p("mlp.fc2.weight"),
            p("mlp.fc2.bias"),
        )
        x = x + h
        if i == 0:
            first = x
    x = F.layer_norm(x, (d,), state["norm.weight"], state["norm.bias"], 1e-6).mean(1)
    x = F.layer_norm(x, (d,), state["outputlayer.0.weight"], state["outputlayer.0.bias"], 1e-5)
    return F.linear(x, state["outputlayer.1.weight"], state["outputlayer.1.bias"]), first


def test_forward_matches_independent_reference(tiny, tiny_files):
    x = _wave(3.0, batch=2)
    with torch.no_grad():
        ours = tiny.forward_logits(x)
        tokens = tiny.forward_tokens(x)[0]
        ref, ref_tokens = _reference(tiny_files[0], x)
    assert ours.shape == (2, 527)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tokens, ref_tokens, rtol=1e-4, atol=1e-4)  # frequency-major order


def test_ten_seconds_gives_248_tokens(tiny):
    with torch.no_grad():
        tokens = tiny.forward_tokens(_wave(10.0, batch=2))
        emb = tiny(_wave(10.0, batch=2))
    assert len(tokens) == 12 and all(t.shape == (2, 248, 192) for t in tokens)
    assert emb.shape == (2, 192)


def test_embedding_pools_selected_blocks(tiny_files):
    state = tiny_files[0]
    model = CED("tiny", embed_blocks=(10, 7))
    model.load_state_dict(state)
    model.eval()
    x = _wave(2.0, batch=2)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        expected = (tokens[7].mean(1) + tokens[10].mean(1)) / 2  # raw block outputs
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        last = CED("tiny", embed_blocks=(11,))
        last.load_state_dict(state)
        last.eval()
        torch.testing.assert_close(last(x), last.norm(tokens[11]).mean(1), rtol=1e-5, atol=1e-5)


def test_embedding_independent_of_batch(tiny):
    x = _wave(2.0, batch=3, seed=4)
    x[0, SR:] = 0.0  # digital silence (-100 dB) ...
    x[1] *= 100.0  # ... must not be lifted by a much louder batch mate (per-clip dB floor)
    with torch.no_grad():
        batched = tiny(x)
        alone = torch.cat([tiny(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)


def _manual_chunked(model: CED, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's recipe: split the normalised log-mel into 1012 frames, zero-pad the last."""
    x = model.init_bn(model.front_end(wave).unsqueeze(1))
    embs, logits = [], []
    for chunk in x.split(fe.CED_TARGET_FRAMES, dim=-1):
        if chunk.shape[-1] < fe.CED_TARGET_FRAMES:
            chunk = F.pad(chunk, (0, fe.CED_TARGET_FRAMES - chunk.shape[-1]))
        h = model.norm(model.blocks(model._tokens(chunk))).mean(1)
        embs.append(h)
        logits.append(model.outputlayer(h))
    return torch.stack(embs).mean(0), torch.stack(logits).mean(0)


def test_long_input_is_chunked(tiny):
    x = _wave(12.0, batch=2, seed=5)  # 1201 frames: a full chunk and a zero-padded one
    with torch.no_grad():
        emb, logits = _manual_chunked(tiny, x)
        torch.testing.assert_close(tiny(x), emb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tiny.forward_logits(x), logits, rtol=1e-5, atol=1e-5)
        tokens = tiny.forward_tokens(x)
    assert tokens[0].shape == (2, 2 * 4 * 63, 192)


def test_three_chunks(tiny):
    x = _wave(25.0, seed=8)  # 2501 frames -> 1012 + 1012 + 477 (padded)
    assert math.ceil(fe.n_frames(x.shape[1], fe.CED_HOP, fe.CED_N_FFT) / 1012) == 3
    with torch.no_grad():
        emb, _ = _manual_chunked(tiny, x)
        torch.testing.assert_close(tiny(x), emb, rtol=1e-5, atol=1e-5)


def test_exact_multiple_keeps_last_chunk(tiny):
    """2024 frames = two full chunks: both count (the original would drop the second)."""
    x = _wave(2023 * 160 / SR, seed=6)
    assert fe.n_frames(x.shape[1], fe.CED_HOP, fe.CED_N_FFT) == 2024
    with torch.no_grad():
        emb, _ = _manual_chunked(tiny, x)
        first_only = tiny.norm(tiny.blocks(tiny._tokens(
            tiny.init_bn(tiny.front_end(x).unsqueeze(1))[..., :1012]))).mean(1)  # fmt: skip
        torch.testing.assert_close(tiny(x), emb, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tiny(x), first_only, atol=1e-3)


def test_short_input_uses_first_time_positions(tiny_files):
    model = CED("tiny")
    model.load_state_dict(tiny_files[0])
    model.eval()
    x = _wave(1.0)  # 101 frames -> 6 time patches
    with torch.no_grad():
        assert model.forward_tokens(x)[0].shape == (1, 24, 192)
        before = model(x)
        model.time_pos_embed[..., 6:] += 1.0  # unused positions
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
        # a used position; not by a constant, which every LayerNorm after it cancels exactly
        d = model.time_pos_embed.shape[1]
        model.time_pos_embed[..., 5] += torch.linspace(-1.0, 1.0, d).view(1, d, 1)
        assert not torch.allclose(model(x), before)


def test_minimum_length(tiny):
    with torch.no_grad():
        assert tiny.forward_tokens(torch.zeros(1, CED_MIN_SAMPLES))[0].shape == (1, 4, 192)
        with pytest.raises(ValueError, match=f"at least {CED_MIN_SAMPLES} samples"):
            tiny(torch.zeros(1, CED_MIN_SAMPLES - 1))
        with pytest.raises(ValueError, match=r"\[B, samples\]"):
            tiny(torch.zeros(CED_MIN_SAMPLES))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown CED size 'huge'"):
        CED("huge")
    with pytest.raises(ValueError, match="embed_blocks"):
        CED("tiny", embed_blocks=(12,))
    with pytest.raises(ValueError, match="embed_blocks"):
        CED("tiny", embed_blocks=())
    with pytest.raises(ValueError, match="format"):
        ced_state_dict_names("tiny", "onnx")


# -- ONNX ------------------------------------------------------------------------------------


def test_onnx_export_with_front_end(tmp_path, tiny_files):
    ort = pytest.importorskip("onnxruntime")
    model = CED("tiny", embed_blocks=(7, 10))
    model.load_state_dict(tiny_files[0])
    model.eval()
    path = tmp_path / "ced_tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation / tracer warnings
        torch.onnx.export(
            model, (_wave(3.0, batch=2),), str(path), dynamo=False, opset_version=17,
            input_names=["waveform"], output_names=["embedding"],
            dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}},
        )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seconds, batch in [(1.0, 1), (12.0, 2)]:  # 12 s is two chunks: the graph stays dynamic
        x = _wave(seconds, batch=batch, seed=7)
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run(None, {"waveform": x.numpy()})[0]
        assert out.shape == (batch, 192)
        assert np.abs(out - ref).max() < 1e-4
