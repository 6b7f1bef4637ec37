"""Assemble a model package from an encoder and per-machine banks, with parity and drift checks.

`build_package` is the whole export: ONNX export, parity against PyTorch (embeddings and
scores; fails loudly past the tolerance), optional int8 with its measured drift, threshold
calibration, and an atomic write through `monitor.model.package.PackageWriter`.
`write_package` is the last step alone, for encoders that are already exported (the test
fixtures reuse one export).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.onnx_export import (
    ExportedEncoder,
    Tolerance,
    check_parity,
    export_encoder,
    find_frontend,
    torch_embed,
)
from export.onnx_graph import ExportError
from monitor import __version__
from monitor.model.conditions import AlarmRule, default_rule
from monitor.model.enroll import DEFAULT_MAX_BANK, build_bank, scorer_spec
from monitor.model.package import (
    CalibrationDefaults,
    EncoderSpec,
    FrontendParams,
    Int8Encoder,
    MachineEntry,
    Manifest,
    PackageWriter,
    ScorerSpec,
    SeparatorSpec,
    condition_names,
    pack_archive,
    utc_now,
    validate_machine_name,
)

log = logging.getLogger(__name__)


@dataclass
class MachineSpec:
    """One machine's normal memory as the training side fitted it."""

    name: str
    embeddings: np.ndarray  # [N, D]
    domains: list[str | None]
    scorer: Any  # fitted monitor.model.scoring scorer
    info: dict[str, Any] = field(default_factory=dict)
    levels: np.ndarray | None = None  # [N] RMS dBFS of each embedding's audio (level rule)

    @staticmethod
    def levels_of(waves: np.ndarray) -> np.ndarray:
        """RMS level (dBFS) of each clip, as the daemon measures its windows."""
        from monitor.audio.windowing import level_dbfs

        return np.array([level_dbfs(w) for w in np.asarray(waves)], dtype=np.float64)


@dataclass
class Int8Files:
    full: Path
    backbone: Path | None
    drift: dict[str, Any]


def synthetic_parity_clips(n: int, samples: int, sample_rate: int = 16000, seed: int = 0):
    """Noise, tones and silence-with-clicks: varied enough to exercise every part of a graph."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / sample_rate
    clips = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            x = 0.1 * rng.standard_normal(samples)
        elif kind == 1:
            f0 = rng.uniform(50, 400)
            x = sum(0.3 / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) for h in (1, 2, 3))
            x = x + 0.01 * rng.standard_normal(samples)
        else:
            x = np.zeros(samples)
            x[rng.integers(0, samples, 20)] = 0.8
            x = x + 1e-3 * rng.standard_normal(samples)
        clips.append(x)
    return np.asarray(clips, dtype=np.float32)


def _machine_bank(spec: MachineSpec, max_bank: int, rule: AlarmRule):
    """The bank and per-condition calibration of one machine (its DCASE domains are its
    operating conditions; unknown ones are the main condition)."""
    name, params = scorer_spec(spec.scorer)
    conds = condition_names(np.asarray(["" if d is None else d for d in spec.domains]))
    # every training clip its own recording: calibrated on clips held out in turn (10 folds)
    built = build_bank(
        spec.name, name, params, spec.embeddings, list(spec.domains), conds,
        np.arange(len(spec.embeddings)), spec.levels, rule, max_bank, fitted=spec.scorer,
    )  # fmt: skip
    return built.bank, built.calibration


def _check_grid(window_s: float, hop_s: float, sample_rate: int, frame_hop: int | None) -> None:
    """Windows start on STFT frames, so the daemon can reuse frames across windows."""
    for what, seconds in (("window", window_s), ("hop", hop_s)):
        n = int(round(seconds * sample_rate))
        if n <= 0 or (frame_hop and n % frame_hop):
            raise ExportError(
                f"{what} of {seconds} s = {n} samples is not a multiple of the frame hop "
                f"{frame_hop} samples"
            )


def _frontend_params(encoder: ExportedEncoder) -> FrontendParams:
    """The framing the encoder was exported with (its sample rate is the package's own key)."""
    params = {k: v for k, v in encoder.frontend_params.items() if k != "sample_rate"}
    if not params:  # no split graphs: the runtime only needs to know the minimum framing
        return FrontendParams(n_fft=1, hop_length=1, n_mels=1)
    # the exporter describes it as a dict: from_dict keeps what FrontendParams does not model
    return FrontendParams.from_dict(params, "export")


def _int8_spec(int8: Int8Files | None) -> Int8Encoder | None:
    """The int8 graphs under the names `_add_graphs` gives them, with the drift measured."""
    if int8 is None:
        return None
    backbone = "backbone.int8.onnx" if int8.backbone is not None else None
    return Int8Encoder(full="encoder.int8.onnx", backbone=backbone, drift=int8.drift)


def _encoder_spec(encoder: ExportedEncoder, int8: Int8Files | None, precision: str) -> EncoderSpec:
    """The encoder section: fixed file names, so the package never depends on export paths."""
    return EncoderSpec(
        full="encoder.onnx",
        frontend="frontend.onnx" if encoder.frontend else None,
        backbone="backbone.onnx" if encoder.backbone else None,
        int8=_int8_spec(int8),
        precision=precision,
        arch=encoder.arch,
        opset=encoder.opset,
        extra={"input": "waveform", "output": "embedding"},  # for readers of the JSON
    )


def _separator_spec(
    encoder: ExportedEncoder, separator: Path | None, frontend: FrontendParams
) -> SeparatorSpec | None:
    """A waveform -> waveform graph given as ``separator``, or the frames -> frames separator
    exported with the encoder (runs between frontend.onnx and backbone.onnx)."""
    if separator and encoder.separator:
        raise ExportError("two separators: the model has one inside and another was given")
    if separator:
        return SeparatorSpec(file="separator.onnx", input="waveform", output="waveform")
    if encoder.separator:
        # the exporter's description is a dict (with keys such as mask_mode that SeparatorSpec
        # keeps as extra); from_dict also checks it against the front-end before any writing
        info = {"file": "separator.onnx", **(encoder.separator_info or {})}
        return SeparatorSpec.from_dict(info, frontend, "export")
    return None


def _scorer_spec(
    default_scorer: tuple[str, dict[str, Any]] | None, machines: Sequence[MachineSpec]
) -> ScorerSpec:
    """The scorer of machines enrolled later: as asked, else the first machine's, else k-NN."""
    if default_scorer is None and machines:
        default_scorer = scorer_spec(machines[0].scorer)
    if default_scorer is None:
        return ScorerSpec("rescaled_knn", {"k": 16, "metric": "cosine"})
    return ScorerSpec(*default_scorer)


def _add_graphs(
    w: PackageWriter, encoder: ExportedEncoder, int8: Int8Files | None, separator: Path | None
) -> None:
    """Stage every ONNX graph under the names that `_encoder_spec` and `_separator_spec` use."""
    w.add_file("encoder.onnx", encoder.full)
    if encoder.frontend and encoder.backbone:
        w.add_file("frontend.onnx", encoder.frontend)
        w.add_file("backbone.onnx", encoder.backbone)
    if int8 is not None:
        w.add_file("encoder.int8.onnx", int8.full)
        if int8.backbone is not None:
            w.add_file("backbone.int8.onnx", int8.backbone)
    sep = separator or encoder.separator
    if sep:
        w.add_file("separator.onnx", sep)


def _add_machine(
    w: PackageWriter,
    spec: MachineSpec,
    history: dict[str, Any],
    max_bank: int,
    rule: AlarmRule,
) -> MachineEntry:
    """Stage one machine's bank and calibration; its manifest entry (history: the export)."""
    validate_machine_name(spec.name)
    bank, cal = _machine_bank(spec, max_bank, rule)
    entry = MachineEntry.describe(spec.name, bank, cal.threshold, [dict(history, **spec.info)])
    bank.save(w.path(entry.bank))
    w.write_json(entry.calibration, cal.to_dict())
    return entry


def write_package(
    dest: str | Path,
    encoder: ExportedEncoder,
    machines: Sequence[MachineSpec],
    *,
    recipe: str,
    window_seconds: float,
    hop_seconds: float,
    sample_rate: int = 16000,
    training_data: dict[str, Any] | None = None,
    parity: dict[str, Any] | None = None,
    int8: Int8Files | None = None,
    precision: str = "fp32",
    separator: Path | None = None,
    default_scorer: tuple[str, dict[str, Any]] | None = None,
    calibration: CalibrationDefaults | None = None,
    max_bank_size: int = DEFAULT_MAX_BANK,
    archive: str | Path | None = None,
) -> Path:
    """Write the package directory ``dest`` atomically (and the archive form if asked)."""
    _check_grid(window_seconds, hop_seconds, sample_rate, encoder.frontend_params.get("hop_length"))
    if precision == "int8" and int8 is None:
        raise ExportError("precision int8 needs the int8 encoder (--int8)")
    history = {"time": utc_now(), "action": "export", "recipe": recipe}
    calibration = calibration or CalibrationDefaults()
    rule = default_rule(
        window_seconds,
        hop_seconds,
        calibration.false_alarms_per_week,
        calibration.burst_seconds,
    )
    frontend = _frontend_params(encoder)
    separator_spec = _separator_spec(encoder, separator, frontend)
    with PackageWriter(dest) as w:
        _add_graphs(w, encoder, int8, separator)
        entries = {
            spec.name: _add_machine(w, spec, history, max_bank_size, rule) for spec in machines
        }
        manifest = Manifest(
            recipe=recipe,
            sample_rate=sample_rate,
            window_seconds=float(window_seconds),
            hop_seconds=float(hop_seconds),
            embedding_dim=int(encoder.embedding_dim),
            frontend=frontend,
            encoder=_encoder_spec(encoder, int8, precision),
            machines=entries,
            separator=separator_spec,
            scorer=_scorer_spec(default_scorer, machines),
            calibration=calibration,
            max_bank_size=int(max_bank_size),
            training_data=training_data or {},
            parity=parity or {},
            created=utc_now(),
            sonitor_version=__version__,
        )
        out = w.commit(manifest)  # fills in ``files`` with the staged files' checksums
    if archive:
        pack_archive(out, archive)
    return out


def score_parity(
    model: Any,
    exported: ExportedEncoder,
    machines: Sequence[MachineSpec],
    clips: np.ndarray,
    tolerance: Tolerance,
) -> dict[str, Any]:
    """Scores of the same clips from PyTorch and onnxruntime embeddings, per machine."""
    from monitor.model.runtime import Embedder
    from monitor.model.thresholds import calibrate

    ref = torch_embed(model, clips)
    ort = Embedder({"encoder": exported.full}).embed(clips)
    out: dict[str, Any] = {}
    for spec in machines:
        thr = calibrate(spec.scorer.loo_scores()).threshold
        a, b = spec.scorer.score_samples(ref), spec.scorer.score_samples(ort)
        rel = float(np.max(np.abs(a - b)) / thr)
        out[spec.name] = {
            "max_abs_score_diff": float(np.max(np.abs(a - b))),
            "rel_to_threshold": rel,
        }
        if rel > tolerance.rel_score:
            raise ExportError(
                f"machine {spec.name!r}: onnxruntime scores differ from PyTorch by {rel:.3g} of "
                f"the threshold (tolerance {tolerance.rel_score:g})"
            )
    return out


def build_package(
    dest: str | Path,
    model: Any,
    machines: Sequence[MachineSpec],
    *,
    recipe: str,
    window_seconds: float = 10.0,
    hop_seconds: float = 1.0,
    sample_rate: int = 16000,
    parity_clips: np.ndarray | None = None,
    tolerance: Tolerance | None = None,
    int8: bool = False,
    precision: str = "fp32",
    drift_data: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[Path, dict[str, Any]]:
    """Export ``model``, check parity (and int8 drift), write the package; returns (path, report).

    ``drift_data`` (optional): ``{machine: (waves [N, T], labels [N] 1 = anomaly, domains)}`` of
    labelled test clips; with it the int8 drift includes the change in the official score.
    """
    tol = tolerance or Tolerance()
    win = int(round(window_seconds * sample_rate))
    spec = find_frontend(model)
    if spec is not None:  # fail before the (slow) export, not after
        _check_grid(window_seconds, hop_seconds, sample_rate, spec.params["hop_length"])
    if parity_clips is None:
        parity_clips = synthetic_parity_clips(4, win, sample_rate)
    with tempfile.TemporaryDirectory(prefix="sonitor-export-") as tmp:
        exported = export_encoder(model, Path(tmp) / "fp32", sample_rate=sample_rate)
        report: dict[str, Any] = {
            "embeddings": check_parity(model, exported, parity_clips, tolerance=tol),
            "scores": score_parity(model, exported, machines, parity_clips, tol),
            "tolerance": vars(tol),
        }
        log.info("parity ok: %s", report)
        int8_files = None
        if int8:
            from export.quantize import check_drift, measure_drift, quantize_encoder

            q_full = quantize_encoder(exported.full, Path(tmp) / "int8" / "encoder.int8.onnx")
            q_bb = None
            if exported.backbone is not None:
                q_bb = quantize_encoder(
                    exported.backbone, Path(tmp) / "int8" / "backbone.int8.onnx"
                )
            # more clips than the parity check: a rank correlation needs a spread of scores
            drift_clips = np.concatenate([parity_clips, synthetic_parity_clips(20, win, seed=1)])
            drift = measure_drift(exported.full, q_full, machines, drift_clips, drift_data)
            check_drift(drift)
            report["int8_drift"] = drift
            int8_files = Int8Files(q_full, q_bb, drift)
        path = write_package(
            dest,
            exported,
            machines,
            recipe=recipe,
            window_seconds=window_seconds,
            hop_seconds=hop_seconds,
            sample_rate=sample_rate,
            parity=report,
            int8=int8_files,
            precision=precision,
            **kwargs,
        )
    return path, report
