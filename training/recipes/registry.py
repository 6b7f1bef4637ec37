"""Recipe names -> classes, and `auto`: the strongest recipe that can run with what is here."""

from __future__ import annotations

import importlib

from training.recipes.base import Recipe, RecipeOptions

# name -> "module:Class"; imported lazily so `--help` stays fast.
RECIPES: dict[str, str] = {
    "stage1": "training.recipes.stage1:Stage1",
    "simclr": "training.recipes.simclr:SimCLR",
    "dcase_ae": "training.recipes.dcase_ae:DcaseAE",
    "logmel_knn": "training.recipes.logmel_knn:LogmelKNN",
    "stage2_ssl": "training.recipes.stage2:Stage2SSL",
    "stage2_ssl_supplemental": "training.recipes.stage2:Stage2SSLSupplemental",
    "stage1_separation": "training.recipes.separation:Stage1Separation",
    "stage2_ssl_separation": "training.recipes.separation:Stage2SSLSeparation",
}


def recipe_class(name: str) -> type[Recipe]:
    module, cls = RECIPES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def resolve_auto(options: RecipeOptions) -> tuple[str, str]:
    """Pick the strongest recipe that can run; return (name, why).

    `stage2_ssl*` are not chosen: without weights they scored 0.811 / 0.813 on the synthetic
    benchmark against simclr's 0.862 (README; benchmarks/results/stage2.md); with weights,
    fine-tuning CED has not been measured here (no official weights on this machine).
    """
    if options.checkpoint:
        return "stage1", "pretrained CED weights given (--checkpoint): frozen CED + rescaled k-NN"
    return (
        "simclr",
        "no pretrained CED weights (--checkpoint): ResNet-18 trained from scratch with SimCLR, "
        "the strongest recipe that needs no download",
    )


def make_recipe(name: str, options: RecipeOptions) -> tuple[Recipe, str]:
    """Instantiate `name` (or resolve `auto`); returns the recipe and why it was chosen."""
    why = f"--recipe {name}"
    if name == "auto":
        name, why = resolve_auto(options)
    if name not in RECIPES:
        from monitor.errors import SonitorError

        raise SonitorError(f"unknown recipe {name!r}; choose from auto, {', '.join(RECIPES)}")
    cls = recipe_class(name)
    if options.separator and not cls.accepts_separator:
        from monitor.errors import SonitorError

        hint = " (use --recipe stage2_ssl_separation)" if name.startswith("stage2_ssl") else ""
        raise SonitorError(f"recipe {name!r} cannot take --separator{hint}")
    return cls(options), why
