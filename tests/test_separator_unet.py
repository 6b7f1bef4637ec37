"""The mask U-Net: any input length, bounded time context, streaming equals whole-window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monitor.errors import CheckpointError
from training.features import CEDFrontEnd
from training.separator.masking import (
    Separator,
    check_frontend,
    insert_separator,
    linear_mask_weights,
    load_separator,
    remove_separator,
    save_separator,
    si_sdr,
)
from training.separator.unet import UNet, UNetConfig, pad_frames


def _separator(**kw) -> Separator:
    torch.manual_seed(0)
    sep = Separator("ced", UNetConfig(channels=4, levels=2), **kw)
    # non-trivial BatchNorm statistics so eval mode is not an identity normalisation
    with torch.no_grad():
        sep.unet.train()
        sep.unet(torch.randn(4, 64, 40) * 10 - 50)
    return sep.eval()


@pytest.mark.parametrize("frames", [1, 2, 7, 33, 250])
def test_unet_takes_any_length(frames: int) -> None:
    sep = _separator()
    db = torch.randn(2, 64, frames) * 10 - 40
    with torch.no_grad():
        out = sep(db)
        mask = sep.mask(db)
    assert out.shape == db.shape
    assert mask.shape == db.shape
    assert float(mask.min()) >= sep.mask_floor and float(mask.max()) <= 1.0
    # masking can only lower the level: masked dB <= input dB
    assert bool((out <= db + 1e-4).all())


def test_context_is_what_the_docstring_says() -> None:
    cfg = UNetConfig(n_mels=32, channels=4, levels=2)
    net = UNet(cfg).eval()
    assert cfg.context == 5
    x = torch.randn(1, 32, 30)
    with torch.no_grad():
        y = net(x)
        assert y.shape[-1] == 30 - 2 * cfg.context
        x2 = x.clone()
        x2[..., 0] += 100.0  # change the first input frame
        y2 = net(x2)
    changed = (y2 - y).abs().amax(dim=1)[0] > 0
    # output frame j sees input frames j .. j + 2c: only output frame 0 sees input frame 0
    assert bool(changed[0]) and not bool(changed[1:].any())


def test_chunked_stream_equals_whole_window() -> None:
    sep = _separator()
    c = sep.context
    db = torch.randn(1, 64, 123) * 8 - 45
    with torch.no_grad():
        whole = sep(db)
        padded = pad_frames(db, c)
        parts, i = [], 0
        for size in (1, 5, 16, 40, 3, 58):  # uneven hops
            parts.append(sep.forward_valid(padded[..., i : i + size + 2 * c]))
            i += size
    stream = torch.cat(parts, dim=-1)
    assert stream.shape == whole.shape
    torch.testing.assert_close(stream, whole, atol=1e-4, rtol=1e-5)


def test_middle_of_a_stream_matches_in_frames_with_full_context() -> None:
    """A window cut from a longer stream agrees with the stream away from its edges."""
    sep = _separator()
    c = sep.context
    db = torch.randn(1, 64, 200) * 8 - 45
    with torch.no_grad():
        whole = sep(db)
        window = sep(db[..., 50:150])  # separated alone: edges replicate-padded
    torch.testing.assert_close(window[..., c:-c], whole[..., 50 + c : 150 - c], atol=1e-4, rtol=0)
    assert float((window[..., :c] - whole[..., 50 : 50 + c]).abs().max()) > 0


def test_hard_mask_is_binary_above_the_floor() -> None:
    sep = _separator(mask_mode="hard", mask_floor=0.05)
    with torch.no_grad():
        m = sep.mask(torch.randn(1, 64, 20) * 10 - 40)
    assert set(np.unique(m.numpy().round(6))) <= {0.05, 1.0}


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="divisible"):
        UNet(UNetConfig(n_mels=60, levels=3))
    with pytest.raises(ValueError, match="mask mode"):
        Separator("ced", UNetConfig(channels=4, levels=2), mask_mode="fuzzy")
    with pytest.raises(ValueError, match="unknown separator front-end"):
        Separator("mfcc")


def test_checkpoint_round_trip_without_pickle(tmp_path) -> None:
    sep = _separator(mask_floor=0.02)
    path = save_separator(tmp_path / "sep.safetensors", sep, {"note": "test"})
    back = load_separator(path)
    db = torch.randn(1, 64, 30) * 10 - 40
    with torch.no_grad():
        torch.testing.assert_close(back(db), sep(db))
    assert back.mask_floor == 0.02 and back.frontend == "ced"
    (tmp_path / "sep.safetensors.json").write_text('{"separator": {"format": "other"}}')
    with pytest.raises(CheckpointError, match="not a separator checkpoint"):
        load_separator(path)


def test_frontend_mismatch_is_refused() -> None:
    from training.features import LogMel

    sep = _separator()
    check_frontend(sep, CEDFrontEnd()[0], "CED")  # same domain: fine
    with pytest.raises(CheckpointError, match="trained for front-end 'ced'.*n_fft 2048"):
        check_frontend(sep, LogMel().mel, "the ResNet encoder")


def test_insert_and_remove_in_an_encoder() -> None:
    from training.models.ced import CED

    torch.manual_seed(0)
    model = CED(size="tiny").eval()
    wave = torch.randn(1, 16000) * 0.1
    with torch.no_grad():
        plain = model(wave)
        insert_separator(model, _separator())
        masked = model(wave)
        bare = remove_separator(model)(wave)
    assert masked.shape == plain.shape
    assert not torch.allclose(masked, plain)
    torch.testing.assert_close(bare, plain)
    with pytest.raises(ValueError, match="already has a separator"):
        insert_separator(model, _separator())


def test_linear_mask_weights_rows_sum_to_one() -> None:
    fb = CEDFrontEnd()[0].mel_scale.fb.numpy()
    w = linear_mask_weights(fb)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)


def test_si_sdr() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(16000)
    assert si_sdr(0.5 * ref, ref) > 100  # scale-invariant
    noisy = ref + rng.standard_normal(16000)  # equal power: about 0 dB
    assert abs(si_sdr(noisy, ref)) < 0.3
