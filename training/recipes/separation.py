"""`stage1_separation`, `stage2_ssl_separation`: `stage1` and `stage2_ssl` with separation, as in
Ozeki et al., "Anomalous sound detection method using contrastive learning" (DCASE 2025, 3.4).

A mask U-Net (training/separator) sits inside the encoder's log-mel front-end, so the encoder sees
the machine's masked spectrogram and scoring needs no inverse STFT. With `--separator CKPT` that
checkpoint is used; otherwise ONE separator is trained first on every machine type's material
(clean = supplemental clean clips, else the normal training clips; noise = supplemental noise-only
clips + `noise_dirs`; SNR uniform in [-10, 10] dB) for `separator_steps` steps (default 300:
0.28 s of one core per step at CED's front-end, 0.32 s at the 2048-point log-mel: about 1.5 min).

`stage2_ssl_separation` needs `training/recipes/stage2.py` (`Stage2SSL`, imported lazily): each
machine type's fresh encoder gets the frozen separator before SimSiam, so training and embedding
both see separated clips, as in the paper. The separator's front-end follows the encoder (`logmel`
for the default ResNet, `ced` for CED).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from monitor.errors import SonitorError
from training.recipes.base import EmbeddingRecipe, MachineArrays, RecipeOptions
from training.recipes.stage1 import Stage1

log = logging.getLogger(__name__)

DEFAULT_STEPS = 300


def separator_material(
    machines: dict[str, MachineArrays], noise_dirs: tuple[str, ...] | list[str] = ()
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, str]]:
    """Pooled clean and noise clips of every machine type, and where each one's clean came from."""
    from training.separator.mixtures import load_noise_dirs

    extra = load_noise_dirs(list(noise_dirs)) if noise_dirs else []
    clean: list[np.ndarray] = []
    noise: list[np.ndarray] = list(extra)
    why: dict[str, str] = {}
    for name, m in machines.items():
        supp, kind = m.supplemental, m.supplemental_kind
        kinds = getattr(m, "supplemental_kinds", None)
        if supp is not None and kinds and len(kinds) == len(supp) and kind == "mixed":
            # per-clip kinds: split the supplemental clips into their clean and noise parts
            c = [x for x, k in zip(supp, kinds, strict=True) if k == "clean"]
            z = [x for x, k in zip(supp, kinds, strict=True) if k == "noise"]
            clean.extend(c or list(m.waves))
            noise.extend(z)
            why[name] = (
                "supplemental clean clips"
                if c
                else "normal training clips (no supplemental clean clips)"
            )
            continue
        has = supp is not None and len(supp) > 0
        if has and kind == "clean":
            clean.extend(supp)  # type: ignore[arg-type]
            why[name] = "supplemental clean clips"
        else:
            clean.extend(m.waves)
            why[name] = "normal training clips (no supplemental clean clips)"
        if has and kind == "noise":
            noise.extend(supp)  # type: ignore[arg-type]
    if not noise:
        raise SonitorError(
            "separation: no noise to train the separator on (no supplemental noise-only clips); "
            "give noise folders (--noise-dir, e.g. ../shared/data/background_noise) or a trained "
            "separator (--separator CKPT)"
        )
    return clean, noise, why


class SeparationMixin:
    """Train or load the separator in `prepare`, after the encoder exists."""

    uses_supplemental: ClassVar[bool] = True
    separator_frontend: ClassVar[str] = "ced"
    options: RecipeOptions
    separator: Any
    separator_history: dict[str, Any]

    def build_separator(self, machines: dict[str, MachineArrays]) -> Any:
        from training.separator.masking import load_separator
        from training.separator.train import TrainConfig, train_separator

        opts = self.options
        if opts.separator:
            return load_separator(opts.separator)
        noise_dirs = tuple(getattr(opts, "noise_dirs", ()) or ()) or tuple(
            opts.extra.get("separator_noise_dirs", ())
        )
        clean, noise, why = separator_material(machines, noise_dirs)
        steps = int(opts.extra.get("separator_steps", DEFAULT_STEPS))
        log.info("training a separator for %d steps (clean: %s)", steps, why)
        sep, hist = train_separator(
            clean,
            noise,
            frontend=self.separator_frontend,
            config=TrainConfig(steps=steps),
            seed=opts.seed,
            device=opts.device,
            progress_bar=opts.progress,
        )
        hist["clean_from"] = why
        self.separator_history = hist
        out = opts.extra.get("separator_out")
        if out:
            from training.separator.masking import save_separator

            sep.source = str(save_separator(Path(out), sep, {"training": hist}))
        return sep


class Stage1Separation(SeparationMixin, Stage1):
    name: ClassVar[str] = "stage1_separation"
    summary: ClassVar[str] = "stage1 with a U-Net mask in front of frozen CED (Ozeki et al., 3.4)"

    def __init__(self, options: RecipeOptions | None = None) -> None:
        super().__init__(options)
        self.separator_history = {}

    def prepare(self, machines: dict) -> None:
        super().prepare(machines)
        self.attach_separator(self.build_separator(machines))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.separator_history:
            d["separator_training"] = self.separator_history
        return d


def _stage2_class() -> type[EmbeddingRecipe]:
    try:
        module = importlib.import_module("training.recipes.stage2")
    except ImportError as exc:
        raise SonitorError(
            f"stage2_ssl_separation needs training/recipes/stage2.py (stage2_ssl): {exc}"
        ) from None
    return module.Stage2SSL


def _stage2_prepare(self: Any, machines: dict) -> None:
    super(self._impl, self).prepare(machines)
    kind = self.settings().get("encoder") or ("ced" if self.options.checkpoint else "resnet")
    self.separator_frontend = "ced" if kind == "ced" else "logmel"
    self.separator = self.build_separator(machines)


def _stage2_new_encoder(self: Any) -> tuple[Any, int]:
    """Each machine type's fresh encoder gets the (frozen) separator BEFORE SimSiam, so its
    training sees separated clips, as the paper's "Stage2_SSL_w_audio_separation" does."""
    from training.separator.masking import insert_separator

    model, dim = super(self._impl, self).new_encoder()
    return insert_separator(model, self.separator), dim


class Stage2SSLSeparation(EmbeddingRecipe):
    """`stage2.Stage2SSL` (imported when used) with the separator inside each machine's encoder.

    The separator's front-end follows the encoder: ``ced`` for CED (with `--checkpoint`),
    ``logmel`` for the default ResNet.
    """

    name: ClassVar[str] = "stage2_ssl_separation"
    summary: ClassVar[str] = "stage2_ssl with a U-Net mask in front of the encoder (Ozeki et al.)"
    uses_supplemental: ClassVar[bool] = True

    def __new__(cls, options: RecipeOptions | None = None) -> EmbeddingRecipe:  # type: ignore[misc]
        base = _stage2_class()
        impl = type(
            "Stage2SSLSeparationImpl",
            (SeparationMixin, base),
            {
                "name": cls.name,
                "summary": cls.summary,
                "prepare": _stage2_prepare,
                "new_encoder": _stage2_new_encoder,
                "__module__": __name__,
            },
        )
        impl._impl = impl  # type: ignore[attr-defined]
        obj = object.__new__(impl)
        impl.__init__(obj, options)
        obj.separator_history = {}
        return obj

    def embed(self, waves: np.ndarray) -> np.ndarray:  # pragma: no cover - never instantiated
        raise NotImplementedError
