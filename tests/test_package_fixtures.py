"""The tiny-package fixture other tests build on: real, fast, and separating normal from anomaly."""

from __future__ import annotations

import numpy as np
from package_fixtures import make_tiny_package, synthetic_machine_audio

from monitor.model.package import ModelPackage
from monitor.model.runtime import Embedder, embed_recording


def test_tiny_package_is_real_and_separates_anomalies(tmp_path):
    path = make_tiny_package(tmp_path / "pkg", machines=("fan", "pump"), n_target=4)
    pkg = ModelPackage.load(path)
    assert pkg.manifest.encoder.arch == "ced-tiny"
    assert pkg.machines == ["fan", "pump"]
    assert (pkg.machine("fan").bank.domains == "target").sum() == 4
    emb = Embedder(pkg)
    for m in pkg.machines:
        mm = pkg.machine(m)
        normal = mm.score(emb.embed(synthetic_machine_audio(m, 12, 2.0, seed=42))) / mm.threshold
        anomal = (
            mm.score(emb.embed(synthetic_machine_audio(m, 12, 2.0, seed=42, anomalous=True)))
            / mm.threshold
        )
        assert np.median(normal) < 1.0, (m, normal)
        assert anomal.min() > 1.5, (m, anomal)
        assert anomal.min() > normal.max()


def test_a_long_recording_with_an_injected_fault(tmp_path):
    """What the daemon tests replay: normal audio, then the fault; windows see the change."""
    pkg = ModelPackage.load(make_tiny_package(tmp_path / "pkg", machines=("fan",)))
    x = np.concatenate(
        [
            synthetic_machine_audio("fan", 1, 6.0, seed=1)[0],
            synthetic_machine_audio("fan", 1, 6.0, seed=1, anomalous=True)[0],
        ]
    )
    starts, e = embed_recording(Embedder(pkg), x, pkg.window_samples, pkg.hop_samples)
    z = pkg.machine("fan").score(e) / pkg.machine("fan").threshold
    before, after = z[starts + pkg.window_samples <= 6 * 16000], z[starts >= 6 * 16000]
    assert np.median(before) < 1.0 and after.min() > 1.5


def test_int8_and_archive_options(tmp_path):
    path = make_tiny_package(
        tmp_path / "pkg", machines=("valve",), n_bank=24, int8=True, archive=tmp_path / "p.tar"
    )
    pkg = ModelPackage.load(tmp_path / "p.tar")
    assert pkg.manifest.encoder.int8.full == "encoder.int8.onnx"
    assert pkg.model_version == ModelPackage.load(path).model_version
    x = synthetic_machine_audio("valve", 2, 2.0)
    a, b = Embedder(pkg, precision="int8").embed(x), Embedder(pkg).embed(x)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99
