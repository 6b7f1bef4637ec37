"""Build a small but REAL model package fast, for any test that needs one (daemon, enrol, score).

The encoder is the real CED-tiny architecture (all 12 blocks, the real front-end) with random
weights, exported once per test process and reused; the banks are embedded from synthetic
machine sounds with onnxruntime. One package takes well under a second after the first export
(about 1-2 s). Random weights still separate these synthetic sounds: `synthetic_machine_audio`
with ``anomalous=True`` scores far above the threshold of its machine (checked in
tests/test_package_fixtures.py).

    from package_fixtures import make_tiny_package, synthetic_machine_audio  # tests/ on sys.path
    pkg_dir = make_tiny_package(tmp_path / "pkg")
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
_CACHE: dict[str, object] = {}

# Per machine: fundamental (Hz), harmonic amplitudes, noise level. Distinct on purpose.
_MACHINES = {
    "fan": (110.0, (1.0, 0.5, 0.25), 0.05),
    "pump": (55.0, (0.6, 0.9, 0.3, 0.2), 0.03),
    "valve": (220.0, (0.8, 0.2), 0.02),
    "gearbox": (160.0, (0.7, 0.7, 0.5, 0.3, 0.2), 0.04),
}


def _machine_params(machine: str) -> tuple[float, tuple[float, ...], float]:
    if machine in _MACHINES:
        return _MACHINES[machine]
    h = zlib.crc32(machine.encode())
    return 60.0 + h % 200, (1.0, 0.4 + (h % 5) / 10, 0.2), 0.03


def synthetic_machine_audio(
    machine: str,
    n: int,
    seconds: float,
    *,
    seed: int = 0,
    anomalous: bool = False,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """``[n, samples]`` float32 SYNTHETIC machine sound: harmonics with small speed jitter + noise.

    ``anomalous=True`` adds a strong amplitude modulation (imbalance) and an off-harmonic whine:
    an unmistakable change for any encoder, even with random weights.
    """
    f0, amps, noise = _machine_params(machine)
    rng = np.random.default_rng([seed, zlib.crc32(machine.encode()), int(anomalous)])
    samples = int(round(seconds * sample_rate))
    t = np.arange(samples) / sample_rate
    out = np.empty((n, samples), dtype=np.float32)
    for i in range(n):
        f = f0 * (1 + 0.01 * rng.standard_normal())
        x = sum(
            a * np.sin(2 * np.pi * f * (h + 1) * t + rng.uniform(0, 2 * np.pi))
            for h, a in enumerate(amps)
        )
        x = 0.2 * x / sum(amps) + noise * rng.standard_normal(samples)
        if anomalous:  # imbalance-like modulation at ~8 Hz + an off-harmonic whine
            x = x * (1 + 0.8 * np.sin(2 * np.pi * rng.uniform(6, 10) * t))
            x = x + 0.3 * np.sin(2 * np.pi * rng.uniform(1200, 1800) * t)
        out[i] = np.clip(x, -1, 1)
    return out


def exported_tiny_encoder():
    """CED-tiny with random (seeded) weights, exported once per process: an ExportedEncoder."""
    if "ced-tiny" not in _CACHE:
        import torch

        from export.onnx_export import export_encoder
        from training.models.ced import CED

        tmp = Path(tempfile.mkdtemp(prefix="sonitor-tiny-encoder-"))
        atexit.register(shutil.rmtree, tmp, True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.manual_seed(0)
            model = CED("tiny").eval()
            _CACHE["ced-tiny"] = export_encoder(model, tmp, example_seconds=2.0)
            _CACHE["ced-tiny-model"] = model
        finally:
            torch.set_num_threads(threads)
    return _CACHE["ced-tiny"]


def tiny_torch_model():
    """The PyTorch model behind `exported_tiny_encoder` (same weights)."""
    exported_tiny_encoder()
    return _CACHE["ced-tiny-model"]


def make_tiny_package(
    dest: str | Path,
    machines: Sequence[str] = ("fan", "pump"),
    recipe: str = "stage1",
    n_bank: int = 64,
    *,
    window_seconds: float = 2.0,
    hop_seconds: float = 0.5,
    scorer: str = "rescaled_knn",
    scorer_params: dict | None = None,
    n_target: int = 0,
    int8: bool = False,
    archive: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """Write a real package (CED-tiny, random weights) with a bank per machine; return its path.

    Banks hold ``n_bank`` source windows (+ ``n_target`` target windows, a slightly faster
    machine) of `synthetic_machine_audio`, embedded with onnxruntime on the runtime path.
    ``int8=True`` also adds the int8 encoder (slower to build: about 2 s).
    """
    from export.package_writer import Int8Files, MachineSpec, write_package
    from monitor.model.runtime import Embedder
    from monitor.model.scoring import scorer_by_name

    enc = exported_tiny_encoder()
    embedder = Embedder({"encoder": enc.full}, threads=1)
    specs = []
    for m in machines:
        waves = synthetic_machine_audio(m, n_bank, window_seconds, seed=seed)
        doms: list[str | None] = ["source"] * n_bank
        if n_target:
            tgt = synthetic_machine_audio(m, n_target, window_seconds, seed=seed + 1000)
            waves = np.concatenate([waves, tgt])
            doms += ["target"] * n_target
        x = np.concatenate([embedder.embed(waves[i : i + 16]) for i in range(0, len(waves), 16)])
        params = dict(scorer_params or ({"k": 8, "metric": "cosine"} if "knn" in scorer else {}))
        fitted = scorer_by_name(scorer, **params).fit(x, domains=doms)
        levels = MachineSpec.levels_of(waves)
        specs.append(MachineSpec(m, x, doms, fitted, {"synthetic": True}, levels=levels))
    q8 = None
    if int8:
        from export.quantize import quantize_encoder

        key = "ced-tiny-int8"
        if key not in _CACHE:
            qdir = Path(tempfile.mkdtemp(prefix="sonitor-tiny-int8-"))
            atexit.register(shutil.rmtree, qdir, True)
            _CACHE[key] = (
                quantize_encoder(enc.full, qdir / "encoder.int8.onnx"),
                quantize_encoder(enc.backbone, qdir / "backbone.int8.onnx"),
            )
        full8, bb8 = _CACHE[key]
        q8 = Int8Files(full8, bb8, {"note": "test fixture: drift not measured"})
    return write_package(
        dest,
        enc,
        specs,
        recipe=recipe,
        window_seconds=window_seconds,
        hop_seconds=hop_seconds,
        training_data={
            "synthetic": True,
            "generator": "tests/package_fixtures.py",
            "n_bank": n_bank,
            "n_target": n_target,
            "seed": seed,
        },
        int8=q8,
        archive=archive,
    )


def copy_package(src: str | Path, dest: str | Path) -> Path:
    """A private copy of a package (real copies, so a test may corrupt files in place)."""
    shutil.copytree(src, dest)
    return Path(dest)
