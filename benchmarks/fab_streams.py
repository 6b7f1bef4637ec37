"""The streams of the false-alarm benchmark: which recordings, cut how, cached where.

Each stream is one WAV (16-bit, 16 kHz) and a JSON sidecar (`fab_replay.Stream`: what is in it,
where faults and bursts were injected), written once into the work folder and reused while the
sidecar's ``key`` (everything the audio depends on) is unchanged. Long normal audio is cut into
parts of at most an hour: memory stays small, and the daemon scores the parts side by side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fab_audio as fa
import numpy as np
from fab_replay import Stream

PART_HOURS = 1.0


@dataclass(frozen=True)
class StreamPlan:
    """What to replay (the benchmark's FULL and QUICK plans set these)."""

    normal_hours: float  # SYNTHETIC normal audio per condition
    real_train: int  # REAL clips the package was trained on (the rest may be replayed)
    real_heldout: int  # REAL held-out clips replayed
    faults: tuple[tuple[str, float], ...]  # SYNTHETIC (kind, severity) per condition
    fault_lead_s: float
    fault_s: float
    real_faults: int  # insertions of the REAL anomalous clip
    real_loops: int  # the 10 s clip looped this many times per insertion
    variant_hours: float  # gain and burst variants: the first this-many hours of normal audio
    gains_db: tuple[float, ...]
    burst_s: tuple[float, ...]
    burst_every_s: float


Make = Callable[[], tuple[np.ndarray, list[fa.Injected]]]


def cached(out: Path, name: str, make: Make, key: Any, **meta: Any) -> Stream:
    """The stream ``name``: from its sidecar when ``key`` matches, else made and written."""
    from monitor.audio.io import write_wav

    wav, side = out / f"{name}.wav", out / f"{name}.json"
    if wav.exists() and side.exists():
        d = json.loads(side.read_text())
        if d.get("key") == json.loads(json.dumps(key)):
            return Stream.from_json(d["stream"])
    x, injected = make()
    note = "SYNTHETIC" if meta["synthetic"] else "REAL recordings"
    write_wav(wav, x, fa.SR, "PCM_16", comment=f"{note}: sonitor bench_false_alarms {name}")
    s = Stream(name=name, path=wav, seconds=x.size / fa.SR, injected=tuple(injected), **meta)
    side.write_text(json.dumps({"key": key, "stream": s.to_json()}, indent=1))
    return s


def variants(
    out: Path, base: Stream, plan: StreamPlan, esc: Any, key: Any, seed: int
) -> list[Stream]:
    """Gain offsets and foreign bursts on the first ``variant_hours`` of a normal stream."""
    from monitor.audio.io import load_audio

    seconds = min(base.seconds, plan.variant_hours * 3600)
    head: dict[str, np.ndarray] = {}

    def audio() -> np.ndarray:
        if "x" not in head:
            head["x"] = load_audio(base.path, sr=fa.SR)[: int(round(seconds * fa.SR))]
        return head["x"]

    meta = {
        "machine": base.machine,
        "condition": base.condition,
        "synthetic": base.synthetic,
        "base": base.name,
        "base_seconds": seconds,
    }
    stem = base.name.split("-normal")[0]
    streams = []
    for g in plan.gains_db:
        name = f"{stem}-{'plus' if g > 0 else 'minus'}{abs(g):g}dB".replace(".", "_")
        streams.append(
            cached(
                out,
                name,
                lambda g=g: (fa.apply_gain(audio(), g)[0], []),
                [key, seconds, g],
                variant=f"gain {g:+g} dB",
                **meta,
            )
        )
    if esc is not None:
        streams.append(
            cached(
                out,
                f"{stem}-bursts",
                lambda: fa.add_bursts(audio(), esc, plan.burst_s, plan.burst_every_s, seed),
                [key, seconds, plan.burst_s, plan.burst_every_s, seed],
                variant="bursts",
                **meta,
            )
        )
    return streams


def make_streams(out: Path, plan: StreamPlan, machine: str, shared: Path | None) -> list[Stream]:
    """Every stream of the run, cached in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    esc = fa.esc50_recordings(shared) if shared else None
    streams: list[Stream] = []
    for i, (cond, regime) in enumerate(fa.regimes(machine).items()):
        meta = {"machine": machine, "condition": cond, "synthetic": True}
        total = plan.normal_hours * 3600
        n_parts = max(1, math.ceil(total / (PART_HOURS * 3600) - 1e-9))
        parts = []
        for k in range(n_parts):
            seconds, seed = total / n_parts, 2000 + 100 * i + k
            parts.append(
                cached(
                    out,
                    f"{machine}-{cond}-normal{k + 1}",
                    lambda r=regime, s=seconds, seed=seed: (
                        fa.synth_normal(machine, r, s, seed),
                        [],
                    ),
                    [machine, cond, seconds, seed],
                    variant="normal",
                    **meta,
                )
            )
        seed = 3000 + i
        streams += parts + [
            cached(
                out,
                f"{machine}-{cond}-faults",
                lambda r=regime, seed=seed: fa.synth_faults(
                    machine, r, plan.faults, seed, plan.fault_lead_s, plan.fault_s
                ),
                [machine, cond, plan.faults, plan.fault_lead_s, plan.fault_s, seed],
                variant="faults",
                **meta,
            )
        ]
        streams += variants(out, parts[0], plan, esc, [machine, cond, seed], 4000 + i)
    if shared is not None:
        streams += real_streams(out, plan, shared, esc)
    return streams


def real_streams(out: Path, plan: StreamPlan, shared: Path, esc: Any) -> list[Stream]:
    """The REAL MIMII ID 00 held-out clips: as they are, with the anomalous clip, variants."""
    real = fa.mimii_id00(shared, plan.real_train)
    held = real.heldout[: plan.real_heldout]
    key = [p.name for p in held]
    meta = {"machine": "mimii_id00", "condition": "source", "synthetic": False}
    base = cached(
        out,
        "mimii_id00-normal1",
        lambda: (fa.crossfade_concat(fa.load_many(held))[0], []),
        key,
        variant="normal",
        **meta,
    )
    lead = max(1, len(held) // (plan.real_faults + 1))
    faults = cached(
        out,
        "mimii_id00-faults",
        lambda: fa.real_faults(
            fa.load_many(held),
            fa.load_many([real.anomaly])[0],
            plan.real_faults,
            plan.real_loops,
            lead,
        ),
        [key, plan.real_faults, plan.real_loops, lead],
        variant="faults",
        **meta,
    )
    return [base, faults, *variants(out, base, plan, esc, key, 4100)]
