"""Recipe plumbing: scorer choice per machine, the auto pick, and no-training recipes end to end."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.errors import SonitorError
from training.recipes.base import MachineArrays, RecipeOptions
from training.recipes.logmel_knn import LogmelKNN
from training.recipes.registry import make_recipe


def _machine(n_source: int, n_target: int, seed: int = 0) -> MachineArrays:
    rng = np.random.default_rng(seed)
    waves = (0.1 * rng.standard_normal((n_source + n_target, 16000))).astype(np.float32)
    return MachineArrays("fan", waves, ["source"] * n_source + ["target"] * n_target)


@pytest.mark.parametrize(("n_target", "expected"), [(10, True), (2, False), (0, True)])
def test_domainwise_default_falls_back_to_pooled_with_too_few_target_clips(n_target, expected):
    rec = LogmelKNN(RecipeOptions())
    rec.fit_machine(_machine(30, n_target))
    assert rec.scorers["fan"].domainwise is expected
    scores = rec.score("fan", _machine(3, 0, seed=1).waves)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert (rec.train_scores("fan") > 0).all()


def test_auto_picks_stage1_with_weights_and_simclr_without(tmp_path):
    rec, why = make_recipe("auto", RecipeOptions())
    assert rec.name == "simclr" and "no pretrained" in why
    rec, why = make_recipe("auto", RecipeOptions(checkpoint=str(tmp_path / "w.safetensors")))
    assert rec.name == "stage1" and "--checkpoint" in why


def test_unknown_recipe_is_a_clear_error():
    with pytest.raises(SonitorError, match="unknown recipe 'nope'"):
        make_recipe("nope", RecipeOptions())


@pytest.mark.parametrize("name", ["dcase_ae", "stage2_ssl", "stage2_ssl_supplemental"])
def test_separator_is_refused_by_recipes_that_cannot_take_it(name):
    from monitor.errors import SonitorError
    from training.recipes.base import RecipeOptions
    from training.recipes.registry import make_recipe

    with pytest.raises(SonitorError, match=f"recipe '{name}' cannot take --separator"):
        make_recipe(name, RecipeOptions(separator="sep.safetensors"))
    make_recipe(name, RecipeOptions())  # fine without one
