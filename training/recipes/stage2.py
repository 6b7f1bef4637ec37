"""`stage2_ssl` and `stage2_ssl_supplemental`: SimSiam fine-tuning per machine type (Ozeki et
al., "Anomalous sound detection method using contrastive learning", DCASE 2025, sections
3.2-3.3), then the ENCODER output (not the projector) + rescaled k-NN as in stage 1.

- `stage2_ssl`: SimSiam on the machine's normal training clips with the paper's six waveform
  augmentations (`training.augment_wave`): gain, polarity, pitch shift, time stretch, background
  noise from the noise folders (`--noise-dir`) and from the machine's noise-only supplemental
  clips (the paper's augmentation 6, so this recipe reads supplemental/ too).
- `stage2_ssl_supplemental`: also the clean supplemental clips, as extra normal material and as
  the clean part of mixtures (their views always get a background when a bank exists).
Which supplemental kind a machine has comes from the names or `--supplemental-kind`
(`training.supplemental`); the recipe logs and `describe()`s what it used per machine.

Encoder: with `--checkpoint`, the pretrained CED it names (the paper's choice), fine-tuned whole.
Without weights: a ResNet from scratch, read out at its first residual stage (`StageEmbedder`,
mean+fmax pooling, 128-d: the readout the `simclr` recipe measured best on this kind of data).
`extra["stage2"]["encoder"] = "ced"` forces CED from random weights. Measured on the SYNTHETIC
benchmark's pump (100 training clips, 100 steps, `benchmarks/bench_ablation.py`, results in
`benchmarks/results/stage2.md`): ResNet 0.797, CED-mini from random weights 0.591. Step cost
(2 views x 32 one-second crops, 2 cores): ResNet stage 1 0.33 s, CED-mini 0.74 s, augmentation
0.12 s.

Light fine-tuning on purpose (SimSiam's lr rule, 0.05 x 32 / 256, and ~150 steps): the more
SimSiam learns invariance to these augmentations, the worse the k-NN scores on the synthetic
data (pump: lr 0.05 -> 0.792, 0.2 -> 0.739; 300 steps -> 0.782; against 0.797 at 100 steps);
the full benchmark gains only +0.008 over the untrained encoder (0.794 -> 0.802) with the
paper's six augmentations, +0.017-0.019 (0.811 `stage2_ssl`, 0.813 `stage2_ssl_supplemental`)
with pitch shift and time stretch off, the default
(`training.augment_wave`). Both stay below `simclr` (0.823), so `auto` does not pick them.

Scorer: domain-wise rescaled k-NN (K = 16) with cosine distance (trained embeddings, as in "Keeping
the Balance", Wilkinghoff et al., ICASSP 2025), the same as the other k-NN recipes' default banks.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from training.augment_wave import NoiseBank, WaveAugmentConfig, WaveAugmenter, load_noise_dir
from training.recipes.base import EmbeddingRecipe, MachineArrays, RecipeOptions
from training.recipes.inference import embed_waves
from training.simsiam import SimSiamConfig, step_budget, train_simsiam
from training.supplemental import SupplementalUse, plan_supplemental

log = logging.getLogger(__name__)

RESNET_STAGE = 1
RESNET_POOLING = "mean+fmax"


class Stage2SSL(EmbeddingRecipe):
    name: ClassVar[str] = "stage2_ssl"
    summary: ClassVar[str] = "SimSiam fine-tuning per machine + rescaled k-NN (Ozeki et al., 3.2)"
    # its fit_machine trains an encoder per machine type; stage2_ssl_separation is the variant
    # with a separator in front of it
    accepts_separator: ClassVar[bool] = False
    uses_supplemental: ClassVar[bool] = True  # noise-only clips as background (augmentation 6)
    clean_as_material: ClassVar[bool] = False
    default_scorer: ClassVar[str] = "rescaled_knn_domainwise"
    default_metric: ClassVar[str] = "cosine"

    def __init__(self, options: RecipeOptions | None = None) -> None:
        super().__init__(options)
        self.encoders: dict[str, nn.Module] = {}
        self.histories: dict[str, dict[str, Any]] = {}
        self.supplemental: dict[str, dict[str, Any]] = {}
        self.noise: NoiseBank | None = None
        self.encoder_kind = ""

    # -- configuration ------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """`options.extra["stage2"]`: encoder, augment (mapping), simsiam (SimSiamConfig fields)."""
        return dict(self.options.extra.get("stage2", {}))

    def augment_config(self) -> WaveAugmentConfig:
        s = self.settings()
        if isinstance(s.get("augment"), WaveAugmentConfig):
            return s["augment"]
        if s.get("augment") is not None:
            return WaveAugmentConfig.from_mapping(s["augment"], "stage2 augment")
        if self.options.augment_config:
            return WaveAugmentConfig.load(self.options.augment_config)
        return WaveAugmentConfig()

    def simsiam_config(self, n_clips: int) -> SimSiamConfig:
        kw = dict(self.settings().get("simsiam", {}))
        bs = kw.get("batch_size", SimSiamConfig.batch_size)
        if self.options.steps is not None:
            kw["steps"] = self.options.steps
        kw.setdefault("steps", step_budget(n_clips, bs))
        return SimSiamConfig(**kw)

    def new_encoder(self) -> tuple[nn.Module, int]:
        """A fresh encoder for one machine type and its embedding size (see module docstring)."""
        opts = self.options
        kind = self.settings().get("encoder") or ("ced" if opts.checkpoint else "resnet")
        torch.manual_seed(opts.seed)
        if kind == "ced":
            from training.models.ced import CED, load_ced_checkpoint

            blocks = opts.embed_blocks or (11,)
            if opts.checkpoint:
                model = load_ced_checkpoint(opts.checkpoint, embed_blocks=blocks)
            else:
                log.warning("stage2 CED without --checkpoint: fine-tuning from RANDOM weights")
                model = CED(size=opts.ced_size, embed_blocks=blocks)
            self.encoder_kind = f"ced-{model.size}" + ("" if opts.checkpoint else " (random init)")
            return model, model.embed_dim
        if kind == "resnet":
            from training.simclr import StageEmbedder

            model = StageEmbedder(stage=RESNET_STAGE, pooling=RESNET_POOLING)
            self.encoder_kind = f"resnet18 stage {RESNET_STAGE} {RESNET_POOLING} (from scratch)"
            return model, model.embed_dim
        from monitor.errors import ConfigError

        raise ConfigError(f"stage2 encoder {kind!r}: choose 'ced' or 'resnet'")

    def prepare(self, machines: dict[str, MachineArrays]) -> None:
        banks = [c for d in self.options.noise_dirs for c in load_noise_dir(d)]
        self.noise = NoiseBank(banks, "noise folders") if banks else None
        if self.noise is None and self.augment_config().active("noise"):
            log.info("%s: no --noise-dir given: background-noise augmentation off", self.name)

    # -- training and scoring -----------------------------------------------------------------
    def _supplemental(self, data: MachineArrays) -> SupplementalUse:
        use = plan_supplemental(data, self.options.supplemental_kind)
        if not self.clean_as_material and use.clean is not None:
            use.clean = None  # stage2_ssl: clean clips are stage2_ssl_supplemental's material
        self.supplemental[data.machine] = use.describe()
        log.info("%s %s", self.name, use.summary())
        return use

    def train_encoder(self, data: MachineArrays) -> nn.Module:
        use = self._supplemental(data)
        waves, force = data.waves, np.zeros(len(data.waves), bool)
        if use.clean is not None:
            n = min(use.clean.shape[1], waves.shape[1])
            clean = use.clean[:, :n]
            waves = np.concatenate([waves[:, :n], clean])
            force = np.concatenate([force, np.ones(len(clean), bool)])
        supp_noise = (
            NoiseBank(list(use.noise), "supplemental noise") if use.noise is not None else None
        )
        augmenter = WaveAugmenter(self.augment_config(), self.noise, supp_noise)
        encoder, dim = self.new_encoder()
        cfg = self.simsiam_config(len(waves))
        log.info(
            "%s %s: SimSiam on %d clips, %d steps, augmentations %s",
            self.name,
            data.machine,
            len(waves),
            cfg.steps,
            augmenter.enabled(),
        )
        if cfg.steps > 0:
            self.histories[data.machine] = train_simsiam(
                encoder,
                dim,
                waves,
                augmenter,
                cfg,
                mix_with_noise=force,
                seed=self.options.seed,
                device=self.options.device,
                progress=self.options.progress,
                label=f"{self.name} {data.machine}",
            )
            self.histories[data.machine]["augmentations"] = augmenter.enabled()
        return encoder.eval()

    def fit_machine(self, data: MachineArrays) -> None:
        self.encoders[data.machine] = self.train_encoder(data)
        x = self.embed_for(data.machine, data.waves)
        self.train_embeddings[data.machine] = x
        self.scorers[data.machine] = self.new_scorer(data.domains).fit(x, domains=data.domains)

    def embed_for(self, machine: str, waves: np.ndarray) -> np.ndarray:
        return embed_waves(
            self.encoders[machine],
            waves,
            batch_size=self.options.batch_size,
            device=self.options.device,
            progress=self.options.progress,
        )

    def embed(self, waves: np.ndarray) -> np.ndarray:
        """With one machine type fitted, its encoder; stage 2 has one encoder per machine type."""
        if len(self.encoders) != 1:
            raise RuntimeError("stage2 has one encoder per machine type: use embed_for(machine)")
        return self.embed_for(next(iter(self.encoders)), waves)

    def score(self, machine: str, waves: np.ndarray) -> np.ndarray:
        return self.scorers[machine].score_samples(self.embed_for(machine, waves))

    def embed_machine(self, machine: str, waves: np.ndarray) -> np.ndarray | None:
        return self.embed_for(machine, waves)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            metric=self.default_metric,
            encoder=self.encoder_kind,
            checkpoint=self.options.checkpoint,
            augment=self.augment_config().describe(),
            noise_dirs=list(self.options.noise_dirs),
            supplemental=self.supplemental,
        )
        per = {}
        for m, h in self.histories.items():
            per[m] = {
                "steps": h["hyper"]["steps"],
                "lr": h["hyper"]["learning_rate"],
                "loss_first_last": [h["loss"][0], h["loss"][-1]],
                "z_std_last": h["z_std"][-1],
                "augment_s": round(h["augment_seconds"], 1),
                "model_s": round(h["model_seconds"], 1),
                "augmentations": h.get("augmentations"),
            }
        d["training"] = per
        return d


class Stage2SSLSupplemental(Stage2SSL):
    name: ClassVar[str] = "stage2_ssl_supplemental"
    summary: ClassVar[str] = (
        "stage2_ssl + clean supplemental clips as material and mixtures (Ozeki et al., 3.3)"
    )
    clean_as_material: ClassVar[bool] = True
