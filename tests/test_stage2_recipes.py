"""`stage2_ssl` and `stage2_ssl_supplemental` end to end on tiny synthetic data; their options."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from training.cli import _options, add_recipe_arguments
from training.evaluate import evaluate
from training.recipes.base import MachineArrays, RecipeOptions
from training.recipes.registry import RECIPES, make_recipe
from training.recipes.stage2 import Stage2SSL, Stage2SSLSupplemental
from training.synth import generate_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = {"simsiam": {"batch_size": 6, "crop_seconds": 0.5, "lr": 0.2, "log_every": 2}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("s2data")
    generate_dataset(
        root,
        machines=("fan", "pump"),  # fan: clean supplemental clips, pump: noise-only
        n_train_source=8,
        n_train_target=3,
        n_test_per_group=2,
        n_supplemental=4,
        seconds=1.0,
        seed=0,
    )
    return root


def test_registered_and_resolvable():
    assert {"stage2_ssl", "stage2_ssl_supplemental"} <= set(RECIPES)
    rec, why = make_recipe("stage2_ssl_supplemental", RecipeOptions())
    assert isinstance(rec, Stage2SSLSupplemental) and "stage2_ssl_supplemental" in why
    assert rec.uses_supplemental


def _run(data: Path, out: Path, recipe: str, **kw) -> dict:
    opts = RecipeOptions(progress=False, steps=4, extra={"stage2": TINY}, **kw)
    ev = evaluate(data, out, recipe=recipe, options=opts, plots=False)
    assert np.isfinite(ev.official_score)
    return json.loads((out / "evaluation.json").read_text())["description"]


def test_stage2_ssl_supplemental_uses_clean_and_noise_clips(data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="training"):
        d = _run(data, tmp_path / "sup", "stage2_ssl_supplemental")
    assert "fan: supplemental kind clean (from names): 4 clean clip(s)" in caplog.text
    assert "pump: supplemental kind noise (from names): 0 clean clip(s)" in caplog.text
    assert d["supplemental"]["fan"] == {
        "kind": "clean",
        "kind_from": "names",
        "clean_clips": 4,
        "noise_clips": 0,
    }
    assert d["supplemental"]["pump"]["noise_clips"] == 4
    assert d["supplemental"]["pump"]["clean_clips"] == 0
    assert "supplemental_noise" in d["training"]["pump"]["augmentations"]
    assert "supplemental_noise" not in d["training"]["fan"]["augmentations"]
    assert d["training"]["fan"]["steps"] == 4
    assert d["scorer"] == "rescaled_knn_domainwise" and d["metric"] == "cosine"
    assert d["encoder"].startswith("resnet18 stage 1")


def test_stage2_ssl_keeps_clean_clips_out_and_reads_noise_folders(data, tmp_path):
    noise = SHARED / "background_noise"
    if not noise.is_dir():
        pytest.skip(f"{noise} absent (real recordings live beside the repository)")
    d = _run(data, tmp_path / "ssl", "stage2_ssl", noise_dirs=(str(noise),))
    assert d["supplemental"]["fan"]["clean_clips"] == 0  # clean clips: the other recipe's
    assert d["supplemental"]["pump"]["noise_clips"] == 4
    assert "noise" in d["training"]["fan"]["augmentations"]
    assert d["noise_dirs"] == [str(noise)]


def _arrays(n: int = 8, seconds: float = 1.0, seed: int = 0) -> MachineArrays:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    waves = np.stack(
        [0.1 * np.sin(2 * np.pi * 500 * t + rng.uniform(0, 6)) for _ in range(n)]
    ) + 0.01 * rng.standard_normal((n, t.size))
    return MachineArrays("m", waves.astype(np.float32), ["source"] * (n - 3) + ["target"] * 3)


def test_zero_steps_is_the_untrained_starting_point_and_scores_rank_an_outlier():
    rec = Stage2SSL(RecipeOptions(progress=False, steps=0, k=2, extra={"stage2": TINY}))
    rec.prepare({"m": _arrays()})
    rec.fit_machine(_arrays())
    assert rec.histories == {}  # nothing trained
    test = _arrays(2, seed=1).waves.copy()
    test[1] = np.random.default_rng(2).standard_normal(test.shape[1]).astype(np.float32) * 0.1
    s = rec.score("m", test)
    assert s.shape == (2,) and s[1] > s[0]
    assert rec.train_scores("m").shape == (8,)


def test_ced_encoder_fine_tunes_too():
    opts = RecipeOptions(
        progress=False,
        steps=2,
        ced_size="tiny",
        embed_blocks=(1,),
        k=2,
        extra={"stage2": {**TINY, "encoder": "ced"}},
    )
    rec = Stage2SSL(opts)
    data = _arrays()
    before = rec.new_encoder()[0].state_dict()["blocks.0.attn.qkv.weight"].clone()
    rec.prepare({"m": data})
    rec.fit_machine(data)
    after = rec.encoders["m"].state_dict()["blocks.0.attn.qkv.weight"]
    assert not torch.equal(before, after)  # the whole encoder was fine-tuned
    assert rec.describe()["encoder"] == "ced-tiny (random init)"
    assert rec.train_embeddings["m"].shape == (8, 192)


def test_augment_config_file_and_cli_options(tmp_path):
    cfg = tmp_path / "aug.yaml"
    cfg.write_text("pitch_shift:\n  p: 0.0\nnoise:\n  p: 1.0\n  range: [3, 9]\n")
    p = argparse.ArgumentParser()
    add_recipe_arguments(p)
    args = p.parse_args(
        [
            "--recipe",
            "stage2_ssl",
            "--steps",
            "7",
            "--noise-dir",
            "a",
            "--noise-dir",
            "b",
            "--augment-config",
            str(cfg),
            "--supplemental-kind",
            "noise",
        ]
    )
    opts = _options(args)
    assert opts.steps == 7 and opts.noise_dirs == ("a", "b")
    assert opts.supplemental_kind == "noise"
    rec = Stage2SSL(opts)
    aug = rec.augment_config()
    assert aug.specs["pitch_shift"].p == 0.0 and aug.specs["noise"].low == 3.0
    assert rec.simsiam_config(1000).steps == 7


def test_bad_encoder_name_is_a_config_error():
    from monitor.errors import ConfigError

    rec = Stage2SSL(RecipeOptions(extra={"stage2": {"encoder": "vgg"}}))
    with pytest.raises(ConfigError, match="'vgg'"):
        rec.new_encoder()
