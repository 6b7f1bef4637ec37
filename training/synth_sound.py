"""SYNTHETIC machine sounds: how each machine type sounds, its backgrounds and its faults.

Why procedural: recipes need a data set that exists on a fresh clone, is large enough for an AUC,
has ground truth, and is neither trivial nor hopeless (`training.synth` writes it in the DCASE
layout). Every clip is rendered from its own generators, seeded from (seed, machine, split,
group, index), so its samples do not depend on which process renders it or in what order.

Sound model per clip: rotating harmonics (fundamental = speed/60 with slow jitter), coloured
flow noise modulated by the blade/vane pass, periodic impacts exciting a resonance; plus a
background (factory hum, pink or babble-like) at a drawn SNR. Target domain = other speed, load
and background. Anomalies: bearing-fault impulse trains, imbalance modulation, rubbing bursts,
shifted/missing/extra harmonics, each with a random severity.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy.signal import oaconvolve

from monitor.errors import DataError

SR = 16000
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
