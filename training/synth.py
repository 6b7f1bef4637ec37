"""SYNTHETIC machine sounds in the DCASE Task 2 layout, with domain shift and anomalies.

Why: recipes need a data set that exists on a fresh clone, is large enough for an AUC, has
ground truth, and is neither trivial nor hopeless. Everything is procedural (no recordings),
seeded per clip from (seed, machine, split, group, index), so the bytes do not depend on the
number of worker processes. The data are labelled SYNTHETIC in the README, a marker file and
every WAV's comment: numbers measured on them say nothing about real machines.

Sound model per clip: rotating harmonics (fundamental = speed/60 with slow jitter), coloured
flow noise modulated by the blade/vane pass, periodic impacts exciting a resonance; plus a
background (factory hum, pink or babble-like) at a drawn SNR. Target domain = other speed, load
and background. Anomalies: bearing-fault impulse trains, imbalance modulation, rubbing bursts,
shifted/missing/extra harmonics, each with a random severity.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import shutil
import sys
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.signal import oaconvolve

from monitor.audio.io import write_wav
from monitor.errors import DataError

log = logging.getLogger(__name__)

SR = 16000
FORMAT_VERSION = 1
MARKER = "SYNTHETIC"
ANOMALY_TYPES = ("bearing", "imbalance", "rubbing", "harmonics")
NOISE_TYPES = ("factory", "pink", "babble")
SNR_DB = {"source": (3.0, 9.0), "target": (0.0, 6.0)}  # machine-to-background, drawn per clip
_SPLIT_CODE = {"train": 1, "test": 2, "supplemental": 3}
_GROUP_CODE = {
    ("source", "normal"): 1,
    ("target", "normal"): 2,
    ("source", "anomaly"): 3,
    ("target", "anomaly"): 4,
    ("source", "clean"): 5,
    ("source", "noise"): 6,
    ("target", "noise"): 7,
}


@dataclass(frozen=True)
class Recipe:
    """How one machine type sounds. Harmonics: (multiple of the rotation rate, level dB)."""

    rpm: int  # source-domain nominal speed
    target_speed: float  # target speed = rpm * this
    pass_order: int  # blades/vanes/teeth: the flow noise is modulated at this multiple
    harmonics: tuple[tuple[float, float], ...]
    flow_band: tuple[float, float]  # Hz at nominal speed; scales with speed
    flow_db: float  # flow-noise level re the harmonics
    flow_am: float  # modulation depth of the flow noise by the pass frequency
    impact_rate: float  # impacts per revolution (0: none)
    impact_hz: float  # resonance the impacts excite
    impact_ms: float  # resonance decay time constant
    impact_db: float
    target_noise: str  # background type in the target domain (source: factory)


RECIPES: dict[str, Recipe] = {
    # Axial fan: blade pass dominates, strong broadband air flow.
    "fan": Recipe(
        rpm=1450,
        target_speed=1.14,
        pass_order=7,
        harmonics=((1, -8), (2, -16), (7, 0), (14, -6), (21, -12), (28, -18)),
        flow_band=(120, 4000),
        flow_db=4.0,
        flow_am=0.35,
        impact_rate=0.0,
        impact_hz=0.0,
        impact_ms=0.0,
        impact_db=-99.0,
        target_noise="babble",
    ),
    # Pump: vane pass, liquid turbulence, a valve click once per revolution.
    "pump": Recipe(
        rpm=1480,
        target_speed=0.86,
        pass_order=6,
        harmonics=((1, -4), (2, -10), (3, -16), (6, 0), (12, -8), (18, -14)),
        flow_band=(300, 2500),
        flow_db=-4.0,
        flow_am=0.15,
        impact_rate=1.0,
        impact_hz=2600.0,
        impact_ms=3.0,
        impact_db=-6.0,
        target_noise="pink",
    ),
    # Gearbox: gear mesh (23 teeth) with shaft-rate sidebands, mesh impacts, little flow.
    "gearbox": Recipe(
        rpm=1000,
        target_speed=1.18,
        pass_order=23,
        harmonics=((1, -10), (2, -16), (22, -10), (23, 0), (24, -10), (46, -6), (69, -12)),
        flow_band=(60, 1500),
        flow_db=-14.0,
        flow_am=0.0,
        impact_rate=23.0,
        impact_hz=3200.0,
        impact_ms=0.8,
        impact_db=-10.0,
        target_noise="babble",
    ),
}


def recipe_for(machine: str) -> Recipe:
    """The recipe of a known machine type; any other name gets its own stable random recipe."""
    if machine in RECIPES:
        return RECIPES[machine]
    rng = np.random.default_rng(zlib.crc32(machine.encode()))
    order = int(rng.integers(3, 30))
    harm = [(1.0, -8.0), (2.0, -14.0), (float(order), 0.0), (2.0 * order, -7.0)]
    harm += [(float(order + s), -12.0) for s in (-1, 1) if rng.random() < 0.5]
    lo = float(rng.uniform(60, 400))
    return Recipe(
        rpm=int(rng.integers(60, 300)) * 10,
        target_speed=float(rng.choice([-1, 1]) * rng.uniform(0.1, 0.2) + 1),
        pass_order=order,
        harmonics=tuple(harm),
        flow_band=(lo, float(lo * rng.uniform(5, 20))),
        flow_db=float(rng.uniform(-12, 4)),
        flow_am=float(rng.uniform(0, 0.3)),
        impact_rate=float(rng.choice([0.0, 1.0, 2.0])),
        impact_hz=float(rng.uniform(1500, 5000)),
        impact_ms=float(rng.uniform(0.5, 3)),
        impact_db=float(rng.uniform(-14, -6)),
        target_noise=str(rng.choice(["pink", "babble"])),
    )


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render and name one clip (picklable for worker processes)."""

    machine: str
    split: str  # train | test | supplemental
    domain: str  # source | target
    label: str  # normal | anomaly | clean | noise
    index: int
    speed: int  # rpm
    load: int  # percent
    noise: str  # background type, "none" for clean supplemental clips
    seed: int
    seconds: float
    difficulty: float

    @property
    def group(self) -> int:
        return _GROUP_CODE[(self.domain, self.label)]

    def rng(self, stream: int) -> np.random.Generator:
        """Independent generator per clip and purpose: results never depend on scheduling."""
        key = [self.seed, zlib.crc32(self.machine.encode()), _SPLIT_CODE[self.split]]
        return np.random.default_rng(key + [self.group, self.index, stream])

    @property
    def attributes(self) -> list[tuple[str, str]]:
        if self.label == "noise":
            return [("noise", self.noise)]
        return [("speed", str(self.speed)), ("load", str(self.load)), ("noise", self.noise)]

    @property
    def filename(self) -> str:
        attrs = "_".join(f"{k}_{v}" for k, v in self.attributes)
        if self.split == "supplemental":  # DCASE 2025 form: kind word before the domain
            kind = "machine" if self.label == "clean" else "noise"
            return f"section_00_{kind}_{self.domain}_{self.index:04d}_{attrs}.wav"
        return f"section_00_{self.domain}_{self.split}_{self.label}_{self.index:04d}_{attrs}.wav"

    @property
    def relpath(self) -> str:
        return f"{self.machine}/{self.split}/{self.filename}"


# ---------------------------------------------------------------------------- signal pieces


def _shaped_noise(rng: np.random.Generator, n: int, gain_of_f) -> np.ndarray:
    """White noise coloured in the frequency domain by gain_of_f(f_hz); unit RMS."""
    f = np.fft.rfftfreq(n, 1 / SR)
    spec = rng.standard_normal(f.size) + 1j * rng.standard_normal(f.size)  # = rfft of white
    x = np.fft.irfft(spec * gain_of_f(f), n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _band(lo: float, hi: float, order: int = 2):
    """Smooth band-pass magnitude (Butterworth-like skirts) as a function of frequency."""

    def g(f: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            hp = 1 / np.sqrt(1 + (lo / np.maximum(f, 1e-3)) ** (2 * order))
        return hp / np.sqrt(1 + (f / hi) ** (2 * order))

    return g


def _slow_curve(rng: np.random.Generator, n: int, knots_per_s: float, std: float) -> np.ndarray:
    """A slowly wandering curve (linear interpolation of random knots), mean 0."""
    k = max(2, int(n / SR * knots_per_s) + 2)
    return np.interp(np.arange(n), np.linspace(0, n, k), rng.normal(0, std, k))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _db(x: float) -> float:
    return 10 ** (x / 20)


def _impacts(
    rng: np.random.Generator, phase_rev: np.ndarray, rate: float, hz: float, ms: float
) -> np.ndarray:
    """Impulses each time phase_rev * rate crosses an integer, ringing a damped resonance."""
    n = phase_rev.size
    ticks = np.floor(phase_rev * rate)
    idx = np.flatnonzero(np.diff(ticks) > 0) + 1
    idx = np.clip(idx + rng.integers(-2, 3, idx.size), 0, n - 1)  # slight timing jitter
    train = np.zeros(n)
    train[idx] = rng.uniform(0.7, 1.3, idx.size) * rng.choice([-1.0, 1.0], idx.size)
    t = np.arange(int(SR * ms / 1000 * 6)) / SR
    kernel = np.exp(-t / (ms / 1000)) * np.sin(2 * np.pi * hz * t)
    return oaconvolve(train, kernel)[:n]


def background(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """Procedural background noise with unit RMS: factory hum, pink or babble-like."""
    if kind == "pink":
        return _shaped_noise(rng, n, lambda f: 1 / np.sqrt(np.maximum(f, 20.0)))
    t = np.arange(n) / SR
    if kind == "factory":
        mains = 50.0
        hum = sum(
            _db(-6 * k) * np.sin(2 * np.pi * mains * (k + 1) * t + rng.uniform(0, 2 * np.pi))
            for k in range(6)
        )
        rumble = _shaped_noise(rng, n, lambda f: 1 / np.maximum(f, 30.0))
        hiss = _shaped_noise(rng, n, _band(500, 6000))
        clanks = np.zeros(n)
        hits = rng.integers(0, n, rng.poisson(0.3 * n / SR))
        clanks[hits] = rng.uniform(0.5, 2.0, hits.size)
        tk = np.arange(int(0.05 * SR)) / SR
        ring = np.exp(-tk / 0.01) * np.sin(2 * np.pi * 1700 * tk)
        clank = oaconvolve(clanks, ring)[:n]
        return _unit(0.5 * _unit(hum) + _unit(rumble) + 0.3 * hiss + 0.5 * clank)
    if kind == "babble":
        out = np.zeros(n)
        for _ in range(6):  # talkers: formant-shaped noise, syllable-rate on/off envelope
            f1, f2 = rng.uniform(300, 900), rng.uniform(1000, 2600)
            voice = _shaped_noise(
                rng,
                n,
                lambda f, a=f1, b=f2: _band(a * 0.7, a * 1.3)(f) + 0.6 * _band(b * 0.8, b * 1.2)(f),
            )
            env = np.clip(_slow_curve(rng, n, rng.uniform(4, 8), 1.0) + 0.3, 0, None)
            out += voice * env * rng.uniform(0.5, 1.0)
        return _unit(out)
    raise DataError(f"unknown background noise type {kind!r}; use one of {NOISE_TYPES}")


# ---------------------------------------------------------------------------- one clip


def draw_fault(spec: ClipSpec, kind: str | None = None, severity: float | None = None) -> dict:
    """The fault of an anomalous clip: type, severity in [0, 1] and its parameters.

    Drawn from the clip's own generator (stream 2); `kind`/`severity` force them (tests, demos).
    `difficulty` divides every deviation.
    """
    rng = spec.rng(2)
    drawn_kind = ANOMALY_TYPES[int(rng.integers(len(ANOMALY_TYPES)))]
    drawn_sev = float(rng.uniform(0, 1))
    kind = kind or drawn_kind
    sev = drawn_sev if severity is None else float(severity)
    if kind not in ANOMALY_TYPES:
        raise DataError(f"unknown anomaly type {kind!r}; use one of {ANOMALY_TYPES}")
    d = spec.difficulty
    f: dict = {"type": kind, "severity": sev}
    if kind == "bearing":  # race defect: non-integer order, ringing a structural resonance
        f.update(
            order=rng.uniform(2.8, 5.6),
            hz=rng.uniform(2000, 6000),
            ms=rng.uniform(0.4, 1.5),
            gain=_db(-16 + 20 * sev) / d,
        )
    elif kind == "imbalance":  # once-per-revolution modulation, growing 1x component
        f.update(
            depth=(0.1 + 0.4 * sev) / d,
            boost_db=(6 + 12 * sev) / d,
            phase=rng.uniform(0, 2 * np.pi),
        )
    elif kind == "rubbing":  # band-limited bursts once per revolution (or every other one)
        f.update(
            hz=rng.uniform(1500, 5000),
            duty=rng.uniform(0.1, 0.35),
            every=int(rng.choice([1, 2])),
            gain=_db(-14 + 18 * sev) / d,
        )
    else:  # harmonics: one harmonic shifts or fades, or an extra tone appears
        f.update(
            mode=str(rng.choice(["shift", "missing", "extra"])),
            pick=float(rng.random()),
            sign=float(rng.choice([-1, 1])),
            delta=(0.03 + 0.07 * sev) / d,
            cut_db=(10 + 20 * sev) / d,
            gain=_db(-14 + 16 * sev) / d,
        )
    return f


def render_clip(spec: ClipSpec, fault: dict | None | str = "auto") -> np.ndarray:
    """Render one clip (float32 at 16 kHz) exactly as `generate_dataset` writes it.

    `fault`: "auto" draws it for anomalous clips; None renders the clip's normal twin (same
    machine, noise and gain draws, no fault); a dict from `draw_fault` forces one.
    """
    n = int(round(spec.seconds * SR))
    rng = spec.rng(1)
    lo, hi = SNR_DB[spec.domain]
    if spec.label == "noise":  # at the level it has behind the machine in the mixtures
        x = background(spec.noise, rng, n) * 0.05 * _db(-rng.uniform(lo, hi))
        return np.clip(x, -1, 1).astype(np.float32)
    if isinstance(fault, str):
        fault = draw_fault(spec) if spec.label == "anomaly" else None
    x, rms = _machine(spec, recipe_for(spec.machine), rng, n, fault)
    if spec.noise == "none":
        x = x + 1e-4 * rms * rng.standard_normal(n)  # microphone self-noise only
    else:
        x = x + background(spec.noise, rng, n) * rms * _db(-rng.uniform(lo, hi))
    gain = 0.05 / rms * _db(rng.normal(0, 0.5))  # machine at about -26 dBFS
    return np.clip(x * gain, -1, 1).astype(np.float32)


def _machine(spec: ClipSpec, r: Recipe, rng: np.random.Generator, n: int, fault: dict | None):
    """Machine sound (with the fault, if any) and the RMS of its normal part."""
    f = fault or {"type": None}
    f_rot = spec.speed / 60 * (1 + rng.normal(0, 0.004))
    phase_rev = np.cumsum(f_rot * (1 + _slow_curve(rng, n, 2.0, 0.003))) / SR + rng.uniform()
    w = 2 * np.pi * phase_rev
    load = (spec.load - 60) / 40  # higher load: brighter harmonics, louder
    strong = [k for k, lv in r.harmonics if lv >= -10 and k >= 2]  # audible, not subsonic
    victim = strong[int(f.get("pick", 0) * len(strong))] if f["type"] == "harmonics" else None
    tones = np.zeros(n)
    for k, level in r.harmonics:
        tilt = 6.0 * load * np.log2(max(k, 1) / r.pass_order)
        a = _db(level + tilt + rng.normal(0, 1.0))
        phi = rng.uniform(0, 2 * np.pi)
        kk = k
        if f["type"] == "imbalance" and k == 1:
            a *= _db(f["boost_db"])
        if k == victim and f["mode"] == "shift":
            kk = k * (1 + f["sign"] * f["delta"])
        if k == victim and f["mode"] == "missing":
            a *= _db(-f["cut_db"])
        tones += a * np.sin(kk * w + phi)
    rms_t = np.sqrt(np.mean(tones**2))
    scale = spec.speed / r.rpm
    flow = _shaped_noise(rng, n, _band(r.flow_band[0] * scale, r.flow_band[1] * scale))
    flow *= 1 + r.flow_am * np.sin(r.pass_order * w)
    x = tones + flow * rms_t * _db(r.flow_db + 3 * load + rng.normal(0, 0.7))
    if r.impact_rate > 0:
        imp = _unit(_impacts(rng, phase_rev, r.impact_rate, r.impact_hz, r.impact_ms))
        x = x + imp * rms_t * _db(r.impact_db + rng.normal(0, 1.0))
    x *= _db(4 * load)
    rms = float(np.sqrt(np.mean(x**2)))
    rng = spec.rng(3)  # the fault's own randomness: the normal twin's draws stay identical
    if f["type"] == "imbalance":
        x = x * (1 + f["depth"] * np.sin(w + f["phase"]))
    elif f["type"] == "bearing":
        imp = _impacts(rng, phase_rev, f["order"], f["hz"], f["ms"])
        x = x + _unit(imp * (1 + 0.5 * np.cos(w))) * rms * f["gain"]
    elif f["type"] == "rubbing":
        burst = _shaped_noise(rng, n, _band(f["hz"] * 0.8, f["hz"] * 1.25, 3))
        revs = phase_rev / f["every"]
        on = rng.random(int(revs[-1]) + 2) < 0.8  # some revolutions touch, some do not
        gate = ((revs % 1.0) < f["duty"]) & on[revs.astype(int)]
        x = x + burst * gate * rms * f["gain"]
    elif f["type"] == "harmonics" and f["mode"] == "extra":
        x = x + rms * f["gain"] * np.sin((victim + 0.5) * w + rng.uniform(0, 2 * np.pi))
    return x, rms


# ---------------------------------------------------------------------------- the data set


def _speeds(r: Recipe) -> tuple[list[int], int]:
    """Source speeds (three settings around nominal) and the target speed, rounded to 10 rpm."""
    src = [int(round(r.rpm * f / 10) * 10) for f in (0.96, 1.0, 1.04)]
    return src, int(round(r.rpm * r.target_speed / 10) * 10)


def plan(
    machines: Sequence[str],
    n_train_source: int,
    n_train_target: int,
    n_test_per_group: int,
    n_supplemental: int,
    seconds: float,
    seed: int,
    difficulty: float,
) -> list[ClipSpec]:
    """Every clip of the data set with its name-visible attributes, in a fixed order.

    Source: one of three speeds, load 40/60 %, factory background. Target: shifted speed, load
    85 %, the machine's target background. Supplemental alternates per machine (in the given
    order): clean source machine sound, then noise only (source and target backgrounds).
    """
    specs: list[ClipSpec] = []
    common = {"seed": seed, "seconds": seconds, "difficulty": difficulty}
    for mi, machine in enumerate(machines):
        r = recipe_for(machine)
        specs += [
            _spec(machine, r, "train", "source", "normal", i, common) for i in range(n_train_source)
        ]
        specs += [
            _spec(machine, r, "train", "target", "normal", i, common) for i in range(n_train_target)
        ]
        for domain in ("source", "target"):
            for label in ("normal", "anomaly"):
                specs += [
                    _spec(machine, r, "test", domain, label, i, common)
                    for i in range(n_test_per_group)
                ]
        for i in range(n_supplemental):
            if mi % 2 == 0:
                specs.append(_spec(machine, r, "supplemental", "source", "clean", i, common))
            else:  # noise only: source and target backgrounds alternate
                domain = "source" if i % 2 == 0 else "target"
                specs.append(_spec(machine, r, "supplemental", domain, "noise", i, common))
    return specs


def _spec(machine: str, r: Recipe, split: str, domain: str, label: str, i: int, common: dict):
    """One clip's name-visible attributes, drawn from its own stream (independent of audio)."""
    rng = ClipSpec(machine, split, domain, label, i, 0, 0, "", **common).rng(0)
    src_speeds, tgt_speed = _speeds(r)
    if domain == "source":
        speed, load, noise = int(rng.choice(src_speeds)), int(rng.choice([40, 60])), "factory"
    else:
        speed, load, noise = tgt_speed, 85, r.target_noise
    if label == "clean":
        noise = "none"
    return ClipSpec(machine, split, domain, label, i, speed, load, noise, **common)


def _render_and_write(args: tuple[str, list[ClipSpec]]) -> int:
    out_dir, specs = args
    for spec in specs:
        write_wav(
            Path(out_dir) / spec.relpath,
            render_clip(spec),
            SR,
            "PCM_16",
            comment=f"{MARKER} sonitor training.synth seed={spec.seed}",
        )
    return len(specs)


def _check_params(machines, counts: dict[str, int], seconds, seed, workers, difficulty) -> None:
    if not machines:
        raise DataError("machines: give at least one machine type")
    for m in machines:
        if not m or "/" in m or "\\" in m or m.startswith(".") or m != m.strip():
            raise DataError(f"machines: {m!r} is not usable as a folder name")
    if len(set(machines)) != len(machines):
        raise DataError(f"machines: duplicates in {list(machines)}")
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DataError(f"{name} must be a whole number >= 0, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a whole number >= 0, got {seed!r}")
    if not seconds > 0:
        raise DataError(f"seconds must be > 0, got {seconds!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"workers must be a whole number >= 1, got {workers!r}")
    if not difficulty > 0:
        raise DataError(f"difficulty must be > 0, got {difficulty!r}")


def _read_marker(out: Path) -> dict | None:
    """The JSON part of an earlier run's SYNTHETIC marker, or None."""
    try:
        return json.loads((out / MARKER).read_text().split("\n", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def _prepare_out(out: Path, params: dict, overwrite: bool) -> bool:
    """Make `out` ready; True if it already holds this exact complete data set (reuse it)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        earlier = _read_marker(out)
        if earlier is not None and earlier.get("complete") and earlier.get("parameters") == params:
            return True
        if not overwrite:
            raise DataError(
                f"{out}: folder is not empty (and holds no complete SYNTHETIC set made with "
                "these parameters); choose a new folder or pass overwrite"
            )
        if earlier is None:
            raise DataError(
                f"{out}: not a sonitor SYNTHETIC data set (no {MARKER} file); "
                "refusing to overwrite it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return False


def generate_dataset(
    out_dir: str | Path,
    machines: Sequence[str] = ("fan", "pump", "gearbox"),
    n_train_source: int = 990,
    n_train_target: int = 10,
    n_test_per_group: int = 50,
    n_supplemental: int = 100,
    seconds: float = 10.0,
    seed: int = 0,
    workers: int = 2,
    difficulty: float = 1.0,
    overwrite: bool = False,
) -> Path:
    """Write a SYNTHETIC DCASE-2025-layout data set into `out_dir` and return its path.

    `<out>/<machine>/{train,test,supplemental}/section_00_...wav` (16-bit, 16 kHz), each
    machine's `attributes_00.csv`, and at the root `README.md` and a `SYNTHETIC` marker that
    record how the data were made. `difficulty` > 1 makes anomalies subtler, < 1 louder.
    A folder that already holds a complete set made with the same parameters is reused as it
    is; `overwrite` replaces an earlier SYNTHETIC set (never any other folder).
    """
    machines = tuple(machines)
    counts = {
        "n_train_source": n_train_source,
        "n_train_target": n_train_target,
        "n_test_per_group": n_test_per_group,
        "n_supplemental": n_supplemental,
    }
    _check_params(machines, counts, seconds, seed, workers, difficulty)
    params = {
        "machines": list(machines),
        **counts,
        "seconds": float(seconds),
        "seed": seed,
        "difficulty": float(difficulty),
        "sample_rate": SR,
        "format_version": FORMAT_VERSION,
    }
    out = Path(out_dir)
    if _prepare_out(out, params, overwrite):
        log.info("%s already holds this SYNTHETIC data set; reusing it", out)
        return out
    _write_marker(out, params, machines, complete=False)  # claims the folder before any clip
    specs = plan(machines, seconds=seconds, seed=seed, difficulty=difficulty, **counts)
    t0 = time.perf_counter()
    if workers == 1 or len(specs) < 8:
        _render_and_write((str(out), specs))
    else:
        chunks = [specs[i :: workers * 4] for i in range(workers * 4)]
        # fork where the OS has it: works from scripts without a __main__ guard (spawn and
        # forkserver re-import the caller's main module); workers only run numpy and scipy.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            list(pool.map(_render_and_write, [(str(out), c) for c in chunks if c]))
    elapsed = time.perf_counter() - t0
    for machine in machines:
        _write_attributes(out / machine, [s for s in specs if s.machine == machine])
    _write_readme(out, params, machines)
    _write_marker(out, params, machines, complete=True)
    log.debug("SYNTHETIC data set: %d clips in %.1f s -> %s", len(specs), elapsed, out)
    return out


def _write_attributes(machine_dir: Path, specs: list[ClipSpec]) -> None:
    """`attributes_00.csv` as DCASE 2023+ ships it: file_name,d1p,d1v,d2p,d2v,d3p,d3v."""
    machine_dir.mkdir(parents=True, exist_ok=True)
    lines = ["file_name,d1p,d1v,d2p,d2v,d3p,d3v"]
    for s in specs:
        cells = [c for kv in s.attributes for c in kv]
        cells += [""] * (6 - len(cells))
        lines.append(",".join([s.relpath, *cells]))
    (machine_dir / "attributes_00.csv").write_text("\n".join(lines) + "\n")


def _write_marker(out: Path, params: dict, machines: Sequence[str], complete: bool) -> None:
    recipes = {m: asdict(recipe_for(m)) for m in machines}
    body = {"complete": complete, "parameters": params, "recipes": recipes}
    (out / MARKER).write_text(
        "SYNTHETIC DATA: procedurally generated by sonitor (training.synth); no recording of a "
        "real machine.\n" + json.dumps(body, indent=2) + "\n"
    )


def _write_readme(out: Path, params: dict, machines: Sequence[str]) -> None:
    rows = []
    for m in machines:
        r = recipe_for(m)
        src, tgt = _speeds(r)
        kind = "clean machine sound" if machines.index(m) % 2 == 0 else "noise only"
        rows.append(
            f"| {m} | {', '.join(map(str, src))} rpm, load 40/60 %, factory | "
            f"{tgt} rpm, load 85 %, {r.target_noise} | {kind} |"
        )
    p = params
    (out / "README.md").write_text(f"""# SYNTHETIC machine-sound data set (DCASE Task 2 layout)

**These recordings are SYNTHETIC.** They were generated procedurally by `sonitor synth`
(`training/synth.py`, format version {FORMAT_VERSION}); no real machine was recorded. Scores
measured on them test the pipeline and compare methods with each other; they say nothing about
accuracy on real machines.

Reproduce: `python -m training.synth OUT --machines {" ".join(machines)} --n-train-source \
{p["n_train_source"]} --n-train-target {p["n_train_target"]} --n-test-per-group \
{p["n_test_per_group"]} --n-supplemental {p["n_supplemental"]} --seconds {p["seconds"]:g} \
--seed {p["seed"]} --difficulty {p["difficulty"]:g}` (the worker count does not change the bytes).

## Layout
`<machine>/train/section_00_<source|target>_train_normal_NNNN_speed_<rpm>_load_<%>_noise_<type>.wav`,
`<machine>/test/section_00_<source|target>_test_<normal|anomaly>_NNNN_...wav`
({p["n_test_per_group"]} per domain x label),
`<machine>/supplemental/section_00_<machine|noise>_<domain>_NNNN_...wav`
(DCASE 2025 style: `machine` = clean machine sound, `noise` = background only), and
`<machine>/attributes_00.csv`. 16-bit PCM, {SR} Hz, mono, {p["seconds"]:g} s.

## How the sound is made
Each machine type mixes rotating harmonics (fundamental = speed / 60 with slow speed jitter),
coloured flow noise modulated by the blade/vane/tooth pass, and periodic impacts ringing a
resonance, in its own proportions. Every clip draws its own small variations (speed, harmonic
levels, flow level, gain, background SNR). Background: factory (mains hum, rumble, clanks) in
the source domain at {SNR_DB["source"][0]:g} to {SNR_DB["source"][1]:g} dB SNR; pink or \
babble-like noise in the target domain at {SNR_DB["target"][0]:g} to {SNR_DB["target"][1]:g} dB SNR.

| machine | source domain | target domain | supplemental |
|---|---|---|---|
{chr(10).join(rows)}

Anomalies (test only; one per anomalous clip, type and severity drawn at random, severity
divided by difficulty {p["difficulty"]:g}): bearing-fault impulse trains at a non-integer order
ringing a 2-6 kHz resonance; imbalance (amplitude modulation at the rotation rate, stronger 1x);
rubbing (band-limited noise bursts once per revolution); a harmonic shifted, faded or an extra
half-order tone. File names carry only normal/anomaly, never the fault type.

Parameters: `{json.dumps(p)}`
""")


# ---------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `sonitor synth` / `python -m training.synth`."""
    parser.add_argument("out", help="output folder (new or empty)")
    parser.add_argument(
        "--machines",
        nargs="+",
        default=["fan", "pump", "gearbox"],
        help="machine types (fan, pump, gearbox have hand-made recipes; other "
        "names get a stable random one)",
    )
    parser.add_argument("--n-train-source", type=int, default=990)
    parser.add_argument("--n-train-target", type=int, default=10)
    parser.add_argument(
        "--n-test-per-group", type=int, default=50, help="test clips per domain x normal/anomaly"
    )
    parser.add_argument("--n-supplemental", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes")
    parser.add_argument(
        "--difficulty", type=float, default=1.0, help=">1 subtler anomalies, <1 louder"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier SYNTHETIC data set in OUT"
    )


def run(args: argparse.Namespace) -> int:
    """Generate from parsed arguments; prints where the SYNTHETIC data went."""
    t0 = time.perf_counter()
    out = generate_dataset(
        args.out,
        machines=tuple(args.machines),
        n_train_source=args.n_train_source,
        n_train_target=args.n_train_target,
        n_test_per_group=args.n_test_per_group,
        n_supplemental=args.n_supplemental,
        seconds=args.seconds,
        seed=args.seed,
        workers=args.workers,
        difficulty=args.difficulty,
        overwrite=args.overwrite,
    )
    n = sum(1 for _ in out.rglob("*.wav"))
    print(f"SYNTHETIC data set ready: {n} clips in {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.synth",
        description="Generate a seeded SYNTHETIC machine-sound data set in the DCASE layout.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except DataError as exc:
        print(f"synth: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
