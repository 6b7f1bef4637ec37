"""Enrolment and offline scoring on the runtime path: onnxruntime and numpy, never torch.

`enroll` is how a plant engineer adds a machine, or more normal sound to one, without training:
embed normal recordings with the package's encoder, extend (or create) the machine's bank,
subsample it to a bounded size, recalibrate the threshold, and write the package atomically.

`score_files` scores recordings exactly as the daemon scores live audio: the same streaming
front-end (`monitor.model.runtime.FrameStream`), the same windows, the same scorer.

Bank-size control. Long enrolments make large k-NN banks (scoring cost and memory grow linearly).
Past ``max_bank`` the bank is reduced with a greedy k-center coreset (PatchCore), per operating
condition so the few embeddings of a small condition are not swamped. Mahalanobis scorers keep
every embedding: their cost does not grow with the bank, and a coreset would inflate the
covariance. The thresholds are then calibrated on the scores of ALL enrolled embeddings
against the reduced bank (leave-one-out for kept ones), not on the reduced bank's own
leave-one-out scores, which a coreset inflates by design (it keeps the points that are far from
the others). What the reduction changes is measured
on every enrolment: the Spearman rank correlation between the full bank's and the reduced bank's
calibration scores, both thresholds and the decision agreement, stored in the manifest history.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import AudioError, PackageError, SonitorError
from monitor.model.conditions import (
    DEFAULT_CONDITION,
    AlarmRule,
    ConditionCalibration,
    calibrate_conditions,
    default_rule,
    scorer_domains,
    validate_condition_name,
)
from monitor.model.history import plan_snapshot
from monitor.model.package import (
    Bank,
    CalibrationDefaults,
    MachineEntry,
    ModelPackage,
    PackageWriter,
    ScorerSpec,
    manifest_version,
    pack_archive,
    package_lock,
    utc_now,
    validate_machine_name,
)
from monitor.model.runtime import Embedder, embed_recording
from monitor.model.scoring import Scorer, coreset_subsample, fixed_params, scorer_by_name
from monitor.progress import progress

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
DEFAULT_MAX_BANK = 4096


# --------------------------------------------------------------------------- audio and embedding


def collect_audio_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for WAV/FLAC (sorted); none is an error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise AudioError(f"{p}: no .wav or .flac files in this folder")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise AudioError(f"{p}: no such file or folder")
    if not out:
        raise AudioError("no audio files given")
    return out


def load(path: Path, sample_rate: int) -> np.ndarray:
    from monitor.audio.io import load_audio

    return load_audio(path, sr=sample_rate)


def embed_waveform(
    embedder: Embedder,
    pkg: ModelPackage,
    audio: np.ndarray,
    *,
    stride_seconds: float | None = None,
    name: str = "audio",
) -> tuple[np.ndarray, np.ndarray]:
    """Windows of one recording for a bank: (starts in seconds, embeddings).

    Windows do not overlap by default (``stride_seconds`` = the window): overlapping windows
    are near-duplicates, whose tiny leave-one-out distances would pull the threshold down.
    """
    win = pkg.window_samples
    stride = win if stride_seconds is None else int(round(stride_seconds * pkg.sample_rate))
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride_seconds} s")
    if audio.size < win:
        raise AudioError(
            f"{name}: {audio.size / pkg.sample_rate:.2f} s is shorter than one "
            f"{pkg.window_seconds:g} s window of this package; record longer clips"
        )
    stride -= stride % embedder.hop_length  # windows on the frame grid, as in the daemon
    starts, emb = embed_recording(embedder, audio, win, max(stride, embedder.hop_length))
    return starts / pkg.sample_rate, emb


# --------------------------------------------------------------------------- scorer helpers


def scorer_spec(scorer: Scorer) -> tuple[str, dict[str, Any]]:
    """(registry name, constructor parameters) of a scorer: what a bank stores to refit it.

    Parameters that the name fixes (``domainwise`` of ``rescaled_knn_domainwise``, ...) are
    left out, so that `scorer_from_spec` accepts them back.
    """
    name = scorer.name
    fixed = fixed_params(name)
    params = {
        p: getattr(scorer, p)
        for p in inspect.signature(type(scorer).__init__).parameters
        if p != "self" and p not in fixed and hasattr(scorer, p)
    }
    return name, params


def scorer_from_spec(name: str, params: dict[str, Any]) -> Scorer:
    """A fresh scorer from the (name, params) a package stores; PackageError when they are bad
    (the inverse of `scorer_spec`)."""
    try:
        return scorer_by_name(name, **params)
    except ValueError as exc:
        raise PackageError(f"scorer {name!r} with {params}: {exc}") from None


def _metric(params: dict[str, Any]) -> str:
    return "cosine" if params.get("metric") == "cosine" else "euclidean"


def subsample_bank(
    x: np.ndarray, domains: np.ndarray, n: int, metric: str = "euclidean", seed: int = 0
) -> np.ndarray:
    """Indices of a per-condition greedy coreset of at most ``n`` rows (sorted).

    ``domains``: the condition (or domain) of each row. Each one gets a share of ``n``
    proportional to its size but at least ``min(size, n // 4)``, so a small condition survives
    a large enrolment of another whole.
    """
    if len(x) <= n:
        return np.arange(len(x))
    groups = [np.flatnonzero(domains == d) for d in np.unique(domains)]
    sizes = np.array([len(g) for g in groups])
    floor = np.minimum(sizes, max(n // 4, 1))
    budget = np.minimum(sizes, np.maximum(floor, np.floor(n * sizes / sizes.sum()).astype(int)))
    while budget.sum() > n:  # trim the largest share first
        budget[np.argmax(budget - floor)] -= 1
    keep = [
        g[coreset_subsample(x[g], int(b), seed=seed, metric=metric)]
        for g, b in zip(groups, budget, strict=True)
        if b > 0
    ]
    return np.sort(np.concatenate(keep))


def calibration_scores(scorer: Any, x_all: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Scores of every enrolled embedding against the (possibly reduced) fitted bank.

    Kept rows are scored leave-one-out (never against themselves); dropped rows are ordinary
    queries, since the bank does not contain them.
    """
    loo = np.asarray(scorer.loo_scores(), dtype=np.float64)
    if len(kept) == len(x_all):
        return loo
    out = np.empty(len(x_all))
    mask = np.zeros(len(x_all), bool)
    mask[kept] = True
    out[kept] = loo
    out[~mask] = scorer.score_samples(x_all[~mask])
    return out


CALIBRATION_FOLDS = 10


def recording_folds(
    groups: np.ndarray, conditions: np.ndarray, folds: int = CALIBRATION_FOLDS
) -> np.ndarray:
    """Fold index of each row: whole recordings per fold, every condition in every fold.

    Why not leave-one-out: windows of one recording are near-duplicates of each other, so a
    window's nearest other reference is usually its neighbour in the same take, and its
    leave-one-out score says how it differs from its own recording, not how a new recording of
    the same normal machine scores (what the daemon meets). Measured on SYNTHETIC takes
    (benchmarks/bench_false_alarms.py): 1.7-6.3 % of held-out normal windows over thresholds
    from window-wise leave-one-out scores that promised 0.26 %.

    Each condition's recordings (``groups``) are dealt round-robin to ``folds`` folds; a
    condition with fewer recordings than folds has its recordings cut into contiguous chunks of
    windows first (rows of a recording are stored in time order), so that it is in every fold
    and never held out whole.
    """
    g = np.asarray(groups)
    c = np.asarray(conditions)
    out = np.zeros(len(g), dtype=np.int64)
    for cond in np.unique(c):
        rows = np.flatnonzero(c == cond)
        k = min(folds, len(rows))
        recs = list(dict.fromkeys(g[rows].tolist()))  # recordings in enrolment order
        units: list[np.ndarray] = [rows[g[rows] == r] for r in recs]
        while len(units) < k:  # too few recordings: cut the longest into halves
            units.sort(key=len)
            big = units.pop()
            units += [big[: len(big) // 2], big[len(big) // 2 :]]
        for i, unit in enumerate(units):
            out[unit] = i % k
    return out


def cross_validated_scores(
    name: str,
    params: dict[str, Any],
    x_all: np.ndarray,
    doms: Sequence[str | None],
    folds: np.ndarray,
    kept: np.ndarray | None = None,
    fitted: Scorer | None = None,
) -> np.ndarray:
    """Each row scored by the scorer refitted on the bank rows (``kept``) of the OTHER folds:
    how a new recording scores. The calibration of `enroll`, `sonitor export` and `evaluate`.

    A bank too small to lose a fold (fewer rows than the scorer's K needs) falls back to the
    leave-one-out scores of ``fitted`` (the scorer on the whole bank), with a warning.
    """
    kept = np.arange(len(x_all)) if kept is None else np.asarray(kept)
    in_bank = np.zeros(len(x_all), bool)
    in_bank[kept] = True
    out = np.empty(len(x_all))
    for f in np.unique(folds):
        held = folds == f
        train = np.flatnonzero(in_bank & ~held)
        try:
            scorer = scorer_from_spec(name, params).fit(x_all[train], [doms[int(i)] for i in train])
        except ValueError as exc:
            if fitted is None:
                raise
            log.warning(
                "%d embeddings are too few to hold recordings out for calibration (%s); "
                "using leave-one-out scores",
                len(kept), exc,
            )  # fmt: skip
            return calibration_scores(fitted, x_all, kept)
        out[held] = scorer.score_samples(x_all[held])
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


# --------------------------------------------------------------------------- enrolment


@dataclass
class EnrollResult:
    package: Path
    machine: str
    created: bool
    n_added: int
    n_candidates: int  # old bank + new embeddings, before subsampling
    n_bank: int
    threshold: float
    threshold_before: float | None
    model_version: str
    subsample: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    correlation: float | None = None  # window-to-window, within a recording (the calibration's)
    correlation_pairs: int = 0  # window pairs that measured it (0: the prior alone)
    tail_dof: float | None = None  # the calibration's tail shape (None: a normal law)

    def summary(self) -> str:
        verb = "created" if self.created else "extended"
        s = (
            f"machine {self.machine!r} {verb}: +{self.n_added} embeddings, bank {self.n_bank}"
            f" (of {self.n_candidates}), threshold {self.threshold:.6g}"
        )
        if self.threshold_before is not None:
            s += f" (was {self.threshold_before:.6g})"
        if self.correlation is not None:
            how = f"{self.correlation_pairs} window pairs" if self.correlation_pairs else "prior"
            s += f"; window-to-window correlation {self.correlation:.2f} ({how})"
            s += (
                "; score tail: normal"
                if self.tail_dof is None
                else f"; score tail: Student t, {self.tail_dof:.1f} degrees of freedom"
            )
        if self.subsample:
            s += (
                f"; coreset {self.subsample['from']} -> {self.subsample['to']}: rank correlation "
                f"with the full bank's scores {self.subsample['spearman_vs_full']:.4f}, threshold "
                f"with the full bank {self.subsample['threshold_full']:.6g}"
            )
        return s + f"; package version {self.model_version}"


def enroll_embeddings(
    package: str | Path | ModelPackage,
    machine: str,
    embeddings: np.ndarray,
    condition: str = DEFAULT_CONDITION,
    check: Callable[[ModelPackage], None] | None = None,
    **kwargs: Any,
) -> EnrollResult:
    """Add ``embeddings`` of normal sound to ``machine`` and write the package atomically.

    Holds the package lock from reading to writing, so concurrent enrolments never lose one
    another's changes. ``check`` sees the package under the lock and may refuse by raising
    (an acknowledgement refuses an event already enrolled). Keyword arguments: see
    `_enroll_locked`.
    """
    dest = (package.archive or package.path) if isinstance(package, ModelPackage) else package
    with package_lock(dest):
        if isinstance(package, ModelPackage) and package.model_version != manifest_version(dest):
            package = ModelPackage.load(dest)  # changed since it was loaded: start from the new
        if check is not None:
            package = package if isinstance(package, ModelPackage) else ModelPackage.load(dest)
            check(package)
        return _enroll_locked(package, machine, embeddings, condition, **kwargs)


def _enroll_locked(
    package: str | Path | ModelPackage,
    machine: str,
    embeddings: np.ndarray,
    condition: str = DEFAULT_CONDITION,
    *,
    max_bank: int | None = None,
    scorer: str | None = None,
    scorer_params: dict[str, Any] | None = None,
    budget: float | None = None,
    levels: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    origin: str = "",
    action: str = "enroll",
    details: dict[str, Any] | None = None,
    measure_subsample: bool = True,
    seed: int = 0,
    _before_swap: Any = None,
) -> EnrollResult:
    validate_machine_name(machine)
    try:
        validate_condition_name(condition)
    except ValueError as exc:
        raise SonitorError(str(exc)) from None
    if isinstance(package, ModelPackage):
        pkg = package
        path = pkg.archive or pkg.path
    else:
        path = Path(package)
        pkg = ModelPackage.load(path)
    new = np.asarray(embeddings, dtype=np.float32)
    if new.ndim != 2 or new.shape[1] != pkg.embedding_dim or len(new) == 0:
        raise SonitorError(
            f"enrolment embeddings must be [N >= 1, {pkg.embedding_dim}], got {new.shape}"
        )
    m = pkg.manifest
    created = machine not in pkg.machines
    if created:
        default = m.scorer or ScorerSpec("rescaled_knn")
        name, params = default.name, dict(default.params)
        x_old, c_old = np.zeros((0, new.shape[1]), np.float32), np.zeros(0, str)
        thr_before = None
    else:
        mm = pkg.machine(machine)
        name, params = mm.bank.scorer_name, dict(mm.bank.scorer_params)
        x_old, c_old = mm.bank.embeddings, np.asarray(mm.bank.conditions)
        thr_before = mm.threshold
    if scorer:
        name = scorer
    if scorer_params:
        params.update(scorer_params)
    rule = package_rule(pkg, budget)
    max_bank = int(max_bank or m.max_bank_size or DEFAULT_MAX_BANK)

    x_all = np.concatenate([x_old, new])
    c_all = np.asarray([*c_old.tolist(), *([condition] * len(new))], dtype=str)
    lv_old = np.full(len(x_old), np.nan) if created else np.asarray(mm.bank.levels, np.float64)
    lv_new = np.full(len(new), np.nan) if levels is None else np.asarray(levels, np.float64)
    if lv_new.shape != (len(new),):
        raise SonitorError(f"{len(lv_new)} levels for {len(new)} enrolment embeddings")
    lv_all = np.concatenate([lv_old, lv_new])
    # recordings: the new embeddings' own ids (default: one recording), after the old ones
    g_old = np.zeros(0, np.int64) if created else np.asarray(mm.bank.groups, np.int64)
    g_new = np.zeros(len(new), np.int64) if groups is None else np.asarray(groups, np.int64)
    if g_new.shape != (len(new),):
        raise SonitorError(f"{len(g_new)} recording ids for {len(new)} enrolment embeddings")
    g_new = g_new - (g_new.min() if g_new.size else 0) + (g_old.max() + 1 if g_old.size else 0)
    g_all = np.concatenate([g_old, g_new])
    doms: list[str | None] = list(scorer_domains(c_all.tolist()))
    hint = f"; enrol more normal audio (one embedding per {pkg.window_seconds:g} s window)"
    built = build_bank(
        machine, name, params, x_all, doms, c_all, g_all, lv_all, rule, max_bank,
        seed=seed, hint=hint,
    )  # fmt: skip
    bank, cal, scores, kept = built.bank, built.calibration, built.scores, built.kept

    sub = None
    if len(kept) < len(x_all):
        sub = {"from": int(len(x_all)), "to": int(len(kept)), "threshold_coreset": cal.threshold}
        if measure_subsample:
            full = _fit(name, params, x_all, doms, machine)
            full_scores = cross_validated_scores(name, params, x_all, doms, built.folds, None, full)
            full_cal, full_matched = _calibrate(
                full_scores, x_all, c_all, rule, machine, groups=g_all
            )
            sub["spearman_vs_full"] = spearman(full_scores, scores)
            sub["threshold_full"] = float(full_cal.threshold)
            sub["decision_agreement"] = float(
                np.mean(
                    (full_cal.normalise(full_scores, full_matched.tolist()) > 1.0)
                    == (cal.normalise(scores, built.matched.tolist()) > 1.0)
                )
            )

    event = {
        "time": utc_now(),
        "action": action,
        "condition": condition,
        "n_added": int(len(new)),
        "origin": origin,
        "threshold": float(cal.threshold),
        "thresholds": cal.thresholds(),
        **(details or {}),
    }
    if sub:
        event["subsample"] = sub
    new_version = write_machine(pkg, path, machine, bank, cal, event, _before_swap=_before_swap)
    return EnrollResult(
        package=path,
        machine=machine,
        created=created,
        n_added=int(len(new)),
        n_candidates=int(len(x_all)),
        n_bank=int(len(kept)),
        threshold=float(cal.threshold),
        threshold_before=thr_before,
        model_version=new_version,
        subsample=sub,
        correlation=cal.correlation,
        correlation_pairs=cal.correlation_pairs,
        tail_dof=cal.tail_dof,
    )


@dataclass
class BankBuild:
    """A machine's bank and thresholds, and how they were made (`build_bank`)."""

    bank: Bank
    calibration: ConditionCalibration
    scores: np.ndarray  # [N] held-out calibration score of every candidate embedding
    matched: np.ndarray  # [N] the condition each was matched to
    folds: np.ndarray  # [N] its calibration fold
    kept: np.ndarray  # indices of the candidates the bank keeps


def build_bank(
    machine: str,
    name: str,
    params: dict[str, Any],
    x: np.ndarray,
    doms: Sequence[str | None],
    conditions: np.ndarray,
    groups: np.ndarray,
    levels: np.ndarray | None,
    rule: AlarmRule,
    max_bank: int,
    *,
    fitted: Scorer | None = None,
    seed: int = 0,
    hint: str = "",
) -> BankBuild:
    """Bank and per-condition thresholds of one machine from candidate embeddings: the one path
    of enrolment and export. Subsample (k-NN scorers: a per-condition coreset beyond
    ``max_bank``), fit (``fitted``: the scorer already fitted on all of ``x``, reused when
    nothing was dropped), score every candidate with its recording held out, calibrate.
    Problems are a SonitorError naming the machine (``hint``: what the user can do)."""
    x = np.asarray(x, dtype=np.float32)
    if name.startswith("mahalanobis"):
        # a coreset (which keeps the outskirts) would inflate the covariance: keep every
        # embedding (the Gaussian scorers' cost does not grow with N; mahalanobis_knn's grows
        # linearly, one distance per bank row per window)
        kept = np.arange(len(x))
    else:
        kept = subsample_bank(x, conditions, max_bank, metric=_metric(params), seed=seed)
    if fitted is None or len(kept) < len(x):
        fitted = _fit(name, params, x[kept], [doms[int(i)] for i in kept], machine, hint)
    folds = recording_folds(groups, conditions)
    try:
        scores = cross_validated_scores(name, params, x, doms, folds, kept, fitted)
    except (ValueError, PackageError) as exc:
        raise SonitorError(
            f"machine {machine!r}: cannot calibrate on recordings held out in turn: {exc}{hint}"
        ) from None
    cal, matched = _calibrate(scores, x, conditions, rule, machine, kept, groups)
    bank = Bank(
        x[kept],
        np.asarray(["" if d is None else d for d in doms], dtype="<U6")[kept],
        name,
        params,
        fitted.to_arrays(),
        scores[kept],
        conditions=conditions[kept],
        matched=matched[kept],
        levels=None if levels is None else np.asarray(levels, np.float64)[kept],
        groups=np.asarray(groups, np.int64)[kept],
    )
    return BankBuild(bank, cal, scores, matched, folds, kept)


def _fit(
    name: str, params: dict[str, Any], x: np.ndarray, doms: list, machine: str, hint: str = ""
) -> Scorer:
    try:
        return scorer_from_spec(name, params).fit(x, domains=doms)
    except ValueError as exc:
        raise SonitorError(
            f"machine {machine!r}: cannot fit scorer {name!r} on {len(x)} embeddings: {exc}{hint}"
        ) from None


def _calibrate(
    scores: np.ndarray,
    x: np.ndarray,
    conditions: np.ndarray,
    rule: AlarmRule,
    machine: str,
    kept: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> tuple[ConditionCalibration, np.ndarray]:
    try:
        return calibrate_conditions(
            scores, x, conditions.tolist(), rule, bank_rows=kept, recordings=groups
        )
    except ValueError as exc:
        raise SonitorError(f"machine {machine!r}: cannot calibrate the threshold: {exc}") from None


def package_rule(pkg: ModelPackage, false_alarms_per_week: float | None = None) -> AlarmRule:
    """The alarm rule a package calibrates for: its windows, its budget (or the one given) and
    the default persistence rule (`monitor.model.conditions.default_rule`)."""
    d = pkg.manifest.calibration or CalibrationDefaults()
    budget = false_alarms_per_week or d.false_alarms_per_week
    return default_rule(pkg.window_seconds, pkg.hop_seconds, budget, d.burst_seconds)


def write_machine(
    pkg: ModelPackage,
    dest: Path,
    machine: str,
    bank: Bank,
    cal: Any,
    event: dict[str, Any],
    *,
    _before_swap: Any = None,
) -> str:
    """Write ``pkg`` with ``machine``'s bank and calibration replaced; returns the new version.

    The previous bank and calibration are kept as the change's snapshot (`monitor.model.history`).
    """
    old = pkg.manifest.machines.get(machine)
    snap = plan_snapshot(pkg.manifest, machine)
    if snap is not None:
        event = {**event, "snapshot": snap.folder}
    history = [*(old.history if old is not None else ()), event]
    entry = MachineEntry.describe(machine, bank, cal.threshold, history)
    replaced = {entry.bank, entry.calibration} | (snap.dropped if snap is not None else set())
    if old is not None:
        replaced |= {old.bank, old.calibration}
    manifest = dataclasses.replace(
        pkg.manifest, machines={**pkg.manifest.machines, machine: entry}, modified=utc_now()
    )

    def fill(w: PackageWriter) -> None:
        for rel in pkg.manifest.files:
            if rel not in replaced:
                w.add_file(rel, pkg.path / rel)
        for rel, src in (snap.copies if snap is not None else {}).items():
            w.add_file(rel, pkg.path / src)
        bank.save(w.path(entry.bank))
        w.write_json(entry.calibration, cal.to_dict())

    if pkg.archive is None:
        with PackageWriter(dest) as w:
            fill(w)
            w.commit(manifest, before_swap=_before_swap)
    else:  # rebuild the directory in a temp folder, then replace the archive file atomically
        with tempfile.TemporaryDirectory(prefix="sonitor-enroll-") as tmp:
            with PackageWriter(Path(tmp) / "package") as w:
                fill(w)
                w.commit(manifest)
            if _before_swap is not None:
                _before_swap(Path(tmp) / "package")
            pack_archive(Path(tmp) / "package", pkg.archive)
    return manifest_version(dest)


def enroll(
    package: str | Path,
    machine: str,
    audio: Sequence[str | Path] | None = None,
    *,
    waveforms: Sequence[tuple[str, np.ndarray]] | None = None,
    condition: str = DEFAULT_CONDITION,
    threads: int = 1,
    stride_seconds: float | None = None,
    **kwargs: Any,
) -> EnrollResult:
    """Enrol normal recordings (files/folders, or ``(name, waveform)`` pairs) into ``machine``."""
    pkg = ModelPackage.load(package)
    embedder = Embedder(pkg, threads=threads)
    items: list[tuple[str, np.ndarray]] = list(waveforms or [])
    files = collect_audio_files(audio) if audio else []
    if not files and not items:
        raise AudioError("enroll: no audio given")
    embs: list[np.ndarray] = []
    levels: list[np.ndarray] = []
    groups: list[np.ndarray] = []

    def add(name: str, wave: np.ndarray) -> None:
        starts, e = embed_waveform(embedder, pkg, wave, name=name, stride_seconds=stride_seconds)
        embs.append(e)
        levels.append(window_levels(wave, starts, pkg.window_seconds, pkg.sample_rate))
        groups.append(np.full(len(e), len(groups), np.int64))  # one recording per file

    for f in progress(files, "enrol: embedding file"):  # on a terminal only
        add(str(f), load(f, pkg.sample_rate))
    for name, wave in items:
        add(name, np.asarray(wave, np.float32))
    origin = f"{len(files)} file(s)" if files else ""
    if items:
        origin += (", " if origin else "") + ", ".join(n for n, _ in items)
    return enroll_embeddings(
        pkg,
        machine,
        np.concatenate(embs),
        condition,
        levels=np.concatenate(levels),
        groups=np.concatenate(groups),
        origin=origin,
        **kwargs,
    )


def window_levels(
    audio: np.ndarray, starts_s: np.ndarray, window_s: float, sample_rate: int
) -> np.ndarray:
    """RMS level (dBFS) of each window, as the daemon's windows report it."""
    from monitor.audio.windowing import level_dbfs

    n = int(round(window_s * sample_rate))
    return np.array(
        [level_dbfs(audio[int(round(s * sample_rate)) :][:n]) for s in np.asarray(starts_s)]
    )


# --------------------------------------------------------------------------- offline scoring


@dataclass
class FileScore:
    path: Path
    score: float  # raw, aggregated over the windows
    decision: int  # 1 = anomalous (normalised > 1)
    threshold: float  # raw threshold of the matched condition
    window_starts: np.ndarray  # seconds
    window_scores: np.ndarray  # raw
    condition: str = DEFAULT_CONDITION  # the condition most of its windows matched
    normalised: float = float("nan")  # aggregated score / threshold of the matched condition
    window_normalised: np.ndarray | None = None
    window_conditions: list[str] = field(default_factory=list)


def score_waveform(
    embedder: Embedder, pkg: ModelPackage, machine: str, audio: np.ndarray, name: str = "audio"
) -> tuple[np.ndarray, Any]:
    """Per-window (starts in seconds, `Assessment`) of one recording, as the daemon computes
    them: raw scores, matched conditions, normalised scores."""
    mm = pkg.machine(machine)
    min_samples = pkg.window_samples // 2
    try:
        starts, emb = embed_recording(
            embedder, audio, pkg.window_samples, pkg.hop_samples, min_samples=min_samples
        )
    except ValueError as exc:
        raise AudioError(
            f"{name}: {audio.size / pkg.sample_rate:.2f} s cannot be scored with "
            f"{pkg.window_seconds:g} s windows (at least half a window is needed): {exc}"
        ) from None
    return starts / pkg.sample_rate, mm.assess(emb)


def score_files(
    package: str | Path | ModelPackage,
    machine: str,
    files: Sequence[str | Path],
    *,
    threads: int = 1,
    aggregate: str = "mean",
    precision: str | None = None,
) -> list[FileScore]:
    """Score recordings offline; a file's score aggregates its windows' (mean or max), and is
    normalised by the threshold of the condition most of its windows matched."""
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    mm = pkg.machine(machine)
    if aggregate not in ("mean", "max"):
        raise SonitorError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
    embedder = Embedder(pkg, threads=threads, precision=precision)
    reduce = np.mean if aggregate == "mean" else np.max
    out = []
    for f in collect_audio_files(files):
        starts, a = score_waveform(embedder, pkg, machine, load(f, pkg.sample_rate), str(f))
        names, counts = np.unique(np.asarray(a.conditions), return_counts=True)
        cond = str(names[np.argmax(counts)])
        s = float(reduce(a.raw))
        thr = mm.calibration.threshold_of(cond)
        out.append(
            FileScore(
                f,
                s,
                int(s / thr > 1.0),
                thr,
                starts,
                a.raw,
                cond,
                s / thr,
                a.normalised,
                list(a.conditions),
            )  # fmt: skip
        )
    return out
