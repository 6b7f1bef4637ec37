"""Audio of the false-alarm benchmark (`bench_false_alarms.py`): long streams and what goes in them.

Why streams and not clips: a false-alarm rate is a property of hours of continuous sound through
the alert rule (N of M overlapping windows), which no set of 10 s clips exercises. Pieces are
joined with an equal-power crossfade so that a join is no click the detector could hear.

- SYNTHETIC machine sound (`training.synth_sound`, the `sonitor synth` generator): one unit in two
  operating conditions (its `source` regime, and the `target` regime: another speed, load 85 %,
  another background), rendered in independent pieces (own seed each: another take of the same
  unit), and its faulty twins for injected faults;
- REAL recordings of ``../shared/data``: the DCASE 2020 MIMII machine ID 00 (75 normal clips, one
  anomalous clip), ESC-50 one-second pieces for foreign bursts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.audio.io import load_audio

SR = 16000
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FADE_S = 0.25  # crossfade between joined pieces


def shared_dir(root: Path | None = None) -> Path | None:
    """``../shared/data`` (or ``root``) when it holds the recordings this benchmark uses."""
    d = root or SHARED
    ok = (d / "dcase2020_dev_id00" / "train").is_dir() and (d / "esc50_machine_noise_1s").is_dir()
    return d if ok else None


# ------------------------------------------------------------------------------ joining


def crossfade_concat(
    pieces: Sequence[np.ndarray], fade_s: float = FADE_S
) -> tuple[np.ndarray, list[int]]:
    """Pieces joined with an equal-power crossfade; also each piece's first sample in the result."""
    fade = int(round(fade_s * SR))
    total = sum(len(p) for p in pieces) - fade * max(len(pieces) - 1, 0)
    out = np.zeros(total, np.float32)
    ramp = np.sin(np.linspace(0.0, np.pi / 2, fade, dtype=np.float32)) if fade else None
    starts, pos = [], 0
    for i, p in enumerate(pieces):
        if len(p) <= 2 * fade:
            raise ValueError(f"piece {i} ({len(p)} samples) is shorter than two crossfades")
        x = np.asarray(p, np.float32).copy()
        if ramp is not None and i > 0:
            x[:fade] *= ramp
        if ramp is not None and i < len(pieces) - 1:
            x[-fade:] *= ramp[::-1]
        out[pos : pos + len(x)] += x
        starts.append(pos)
        pos += len(x) - fade
    return out, starts


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def apply_gain(x: np.ndarray, db: float) -> tuple[np.ndarray, int]:
    """``x`` scaled by ``db`` decibels, clipped to [-1, 1]; also how many samples clipped."""
    y = x.astype(np.float32) * np.float32(10 ** (db / 20))
    clipped = int(np.count_nonzero(np.abs(y) > 1.0))
    return np.clip(y, -1.0, 1.0), clipped


# ------------------------------------------------------------------------------ SYNTHETIC unit


@dataclass(frozen=True)
class Regime:
    """One operating condition of the SYNTHETIC unit (the settings of `training.synth`)."""

    condition: str  # its name in the package ("source", "target")
    domain: str  # the synth domain whose SNR range and background it uses
    speed: int  # rpm
    load: int  # percent
    noise: str  # background kind


def regimes(machine: str) -> dict[str, Regime]:
    """The unit's two conditions: nominal speed, 60 % load, factory hall (as `sonitor demo`'s
    unit); the target regime of `training.synth` (shifted speed, 85 % load, its background)."""
    from training.synth_sound import recipe_for

    r = recipe_for(machine)
    nominal = int(round(r.rpm / 10) * 10)
    shifted = int(round(r.rpm * r.target_speed / 10) * 10)
    return {
        "source": Regime("source", "source", nominal, 60, "factory"),
        "target": Regime("target", "target", shifted, 85, r.target_noise),
    }


def _spec(machine: str, regime: Regime, seconds: float, seed: int, index: int):  # noqa: ANN202
    from training.synth_sound import ClipSpec

    return ClipSpec(
        machine,
        "test",
        regime.domain,
        "normal",
        index,
        regime.speed,
        regime.load,
        regime.noise,
        seed,
        seconds,
        1.0,
    )


def synth_normal(
    machine: str, regime: Regime, seconds: float, seed: int, piece_s: float = 60.0
) -> np.ndarray:
    """``seconds`` of the unit's normal sound: independent takes of ``piece_s`` crossfaded."""
    from training.synth_sound import render_clip

    n = max(1, math.ceil((seconds - FADE_S) / (piece_s - FADE_S)))
    pieces = [render_clip(_spec(machine, regime, piece_s, seed, i), fault=None) for i in range(n)]
    x, _ = crossfade_concat(pieces)
    return x[: int(round(seconds * SR))]


@dataclass(frozen=True)
class Injected:
    """Something put into a stream: a fault or a foreign burst, in seconds of the stream."""

    kind: str  # "fault" or "burst"
    label: str  # "bearing 0.8", "REAL anomalous clip", "burst 2 s engine"
    start: float
    end: float


def synth_faults(
    machine: str,
    regime: Regime,
    faults: Sequence[tuple[str, float]],
    seed: int,
    lead_s: float = 90.0,
    fault_s: float = 30.0,
    tail_s: float = 90.0,
) -> tuple[np.ndarray, list[Injected]]:
    """Normal sound with each (kind, severity) fault in turn: ``lead_s`` normal, then the take's
    faulty twin faded in over 0.1 s for ``fault_s`` (the same machine with the fault, as `sonitor
    demo` injects it), and ``tail_s`` of normal sound at the end."""
    from training.synth_sound import draw_fault, render_clip

    pieces, spans = [], []
    ramp = np.linspace(0.0, 1.0, int(0.1 * SR), dtype=np.float32)
    for i, (kind, severity) in enumerate(faults):
        spec = _spec(machine, regime, lead_s + fault_s, seed, i)
        normal = render_clip(spec, fault=None)
        faulty = render_clip(spec, fault=draw_fault(spec, kind=kind, severity=severity))
        a, b = int(round(lead_s * SR)), normal.size
        env = np.zeros(normal.size, np.float32)
        env[a:b] = 1.0
        env[a : a + ramp.size] = ramp
        pieces.append(normal + env * (faulty - normal))
        spans.append((a, b, f"{kind} {severity:g}"))
    pieces.append(render_clip(_spec(machine, regime, tail_s, seed, len(faults)), fault=None))
    x, starts = crossfade_concat(pieces)
    marks = [
        Injected("fault", label, (s + a) / SR, (s + b) / SR)
        for s, (a, b, label) in zip(starts, spans, strict=False)
    ]
    return x, marks


# ------------------------------------------------------------------------------ REAL recordings


@dataclass(frozen=True)
class RealMachine:
    """The MIMII ID 00 recordings, split once: training clips, held-out normal clips, anomaly."""

    train: list[Path]
    heldout: list[Path]
    anomaly: Path


def mimii_id00(shared: Path, n_train: int) -> RealMachine:
    d = shared / "dcase2020_dev_id00"
    normal = sorted((d / "train").glob("normal_*.wav"))
    anomaly = sorted((d / "test").glob("anomaly_*.wav"))
    if len(normal) <= n_train or not anomaly:
        raise SystemExit(f"{d}: expected more than {n_train} normal clips and an anomalous one")
    return RealMachine(normal[:n_train], normal[n_train:], anomaly[0])


def load_many(paths: Sequence[Path]) -> list[np.ndarray]:
    return [load_audio(p, sr=SR) for p in paths]


def real_faults(
    normal: Sequence[np.ndarray], anomaly: np.ndarray, n_faults: int, loops: int, lead: int
) -> tuple[np.ndarray, list[Injected]]:
    """Held-out normal clips with the one REAL anomalous clip, looped ``loops`` times (a
    sustained fault), after every ``lead`` normal clips; ``lead`` normal clips at the end."""
    pieces: list[np.ndarray] = []
    where = []
    clips = iter(list(normal) * (1 + (n_faults + 1) * lead // max(len(normal), 1)))
    for _ in range(n_faults):
        pieces += [next(clips) for _ in range(lead)]
        where.append(len(pieces))
        pieces += [anomaly] * loops
    pieces += [next(clips) for _ in range(lead)]
    x, starts = crossfade_concat(pieces)
    marks = []
    for w in where:
        end = starts[w + loops - 1] + len(pieces[w + loops - 1])
        marks.append(Injected("fault", f"REAL anomalous clip x{loops}", starts[w] / SR, end / SR))
    return x, marks


# ------------------------------------------------------------------------------ foreign bursts


def esc50_recordings(shared: Path) -> dict[str, list[list[Path]]]:
    """ESC-50 one-second pieces per class, grouped by recording (consecutive pieces in order)."""
    out: dict[str, list[list[Path]]] = {}
    for cls in sorted(p for p in (shared / "esc50_machine_noise_1s").iterdir() if p.is_dir()):
        recs: dict[str, list[Path]] = {}
        for f in sorted(cls.glob("*.wav")):
            recs.setdefault(re.sub(r"-\d+$", "", f.stem), []).append(f)
        out[cls.name] = [
            sorted(v, key=lambda p: int(p.stem.rsplit("-", 1)[1])) for _, v in sorted(recs.items())
        ]
    return out


def make_burst(
    recordings: dict[str, list[list[Path]]], seconds: float, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """A foreign sound of ``seconds``: consecutive ESC-50 pieces of one recording (cycled when
    it has fewer), trimmed, with 10 ms fades."""
    cls = sorted(recordings)[int(rng.integers(len(recordings)))]
    rec = recordings[cls][int(rng.integers(len(recordings[cls])))]
    n = int(round(seconds * SR))
    first = int(rng.integers(len(rec)))
    x = np.concatenate(
        [load_audio(rec[(first + i) % len(rec)], sr=SR) for i in range(math.ceil(seconds) + 1)]
    )[:n]
    fade = min(int(0.01 * SR), n // 2)
    x[:fade] *= np.linspace(0, 1, fade, dtype=np.float32)
    x[n - fade :] *= np.linspace(1, 0, fade, dtype=np.float32)
    return x, cls


def add_bursts(
    x: np.ndarray,
    recordings: dict[str, list[list[Path]]],
    durations: Sequence[float],
    every_s: float,
    seed: int,
) -> tuple[np.ndarray, list[Injected]]:
    """``x`` with a foreign burst every ``every_s`` (durations in turn), each mixed at 0 dB
    re the machine: the burst's RMS equals that of the machine sound over the same span."""
    rng = np.random.default_rng(seed)
    y = x.astype(np.float32).copy()
    marks = []
    t, k = every_s / 2, 0
    while t + max(durations) + 1.0 < x.size / SR:
        d = float(durations[k % len(durations)])
        burst, cls = make_burst(recordings, d, rng)
        a = int(round(t * SR))
        level = rms(x[a : a + burst.size]) / max(rms(burst), 1e-9)
        y[a : a + burst.size] += burst * np.float32(level)
        marks.append(Injected("burst", f"burst {d:g} s {cls}", t, t + d))
        t += every_s
        k += 1
    return np.clip(y, -1.0, 1.0), marks
