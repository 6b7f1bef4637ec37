"""`sonitor demo`: the whole job on a fresh machine, from synthetic audio to a printed live alert.

Why one command does it all: it is the shortest proof that every part works together on a
machine with no microphone, broker or downloaded model, and it doubles as a smoke test (exit 0
only when the alert is raised during the injected fault and never before it). The steps are the
ones a plant engineer runs by hand, through the same code:

1. SYNTHETIC DCASE-layout clips of one machine type (`training.synth`);
2. the default recipe (`simclr`) trained on them with a small step budget, and its offline
   DCASE score on the synthetic test split (secondary: the demo is about the live path);
3. the ONNX model package (`export.package_writer`, as `sonitor export --data` does);
4. one continuous take of the monitored unit: its first part is enrolled (`monitor.model.enroll`, as
   `sonitor enroll`), the rest becomes the replay, with a synthetic fault of the same machine
   added to it for a while (the take's own faulty twin, so the splice is seamless);
5. the daemon (`monitor.daemon.Daemon`, as `sonitor run`) on a `type: file` source replayed as
   fast as inference allows (`export.demo_replay`); alert times are audio times there, so N-of-M,
   hold and cooldown mean the same as live. One line per scored window, then the alert events
   (the MQTT payloads; published when a broker is given).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from export.demo_replay import Recordings, describe_event, judge, run_replay
from monitor.audio.frontend import SAMPLE_RATE as SR
from monitor.audio.io import write_wav
from monitor.config import AlertsConfig
from monitor.errors import SonitorError

MACHINES = ("pump", "fan", "gearbox")
STEPS = 5


@dataclass(frozen=True)
class DemoSizes:
    """How much of everything; `FULL` keeps `make demo` under 5 minutes on 2 CPU cores."""

    train_source: int  # normal source-domain training clips
    train_target: int  # normal target-domain training clips
    test_per_group: int  # test clips per domain x normal/anomaly (the offline score)
    clip_seconds: float  # training clip length = the package's analysis window
    hop_seconds: float  # daemon hop: a multiple of the 512-sample STFT hop of the simclr front end
    steps: int  # SimCLR optimiser steps
    batch_size: int  # SimCLR batch (NT-Xent negatives: 2 x batch - 2)
    crop_seconds: float  # SimCLR training crop
    enroll_seconds: float  # normal sound of the monitored unit enrolled into the package
    normal_seconds: float  # replay: normal sound before the fault
    fault_seconds: float  # replay: the injected fault
    after_seconds: float  # replay: normal again (long enough for the alert to clear)


FULL = DemoSizes(
    train_source=300,
    train_target=10,
    test_per_group=25,
    clip_seconds=4.0,
    hop_seconds=1.024,
    steps=120,
    batch_size=32,
    crop_seconds=2.0,
    enroll_seconds=180.0,
    normal_seconds=75.0,
    fault_seconds=25.0,
    after_seconds=30.0,
)
QUICK = DemoSizes(
    train_source=150,
    train_target=6,
    test_per_group=6,
    clip_seconds=4.0,
    hop_seconds=1.024,
    steps=8,
    batch_size=16,
    crop_seconds=1.0,
    enroll_seconds=120.0,
    normal_seconds=40.0,
    fault_seconds=20.0,
    after_seconds=30.0,
)


# ------------------------------------------------------------------------------ progress


class Progress:
    """One line per finished step: what was done and how long it took (step and total)."""

    def __init__(self, out: Callable[[str], None] = print) -> None:
        self.out = out
        self.t0 = self.t_step = time.perf_counter()
        self.n = 0

    def done(self, what: str) -> None:
        now = time.perf_counter()
        self.n += 1
        self.out(
            f"[{self.n}/{STEPS}] {what} ({now - self.t_step:.1f} s; total {now - self.t0:.1f} s)"
        )
        self.t_step = now

    def restart_step(self) -> None:
        self.t_step = time.perf_counter()


# ------------------------------------------------------------------------------ 1. data


def make_data(out: Path, machine: str, sizes: DemoSizes, seed: int) -> Path:
    """The SYNTHETIC DCASE-layout data set of one machine type (reused when it already exists)."""
    from training import synth

    return synth.generate_dataset(
        out,
        machines=(machine,),
        n_train_source=sizes.train_source,
        n_train_target=sizes.train_target,
        n_test_per_group=sizes.test_per_group,
        n_supplemental=0,
        seconds=sizes.clip_seconds,
        seed=seed,
        overwrite=True,
    )


# ------------------------------------------------------------------------------ 2. train + export


# The thresholds: per operating condition, fitted to the package's false-alarm budget (one per
# week with the default alert rule; `monitor.model.conditions`), as every export does.


@dataclass
class Trained:
    """A fitted recipe for one machine, its offline score and the training material it saw."""

    recipe: Any  # training.recipes.simclr.SimCLR after prepare + fit_machine
    machine: str
    domains: list[str | None]  # of the training clips, in bank order
    parity_clips: np.ndarray  # a few real training clips for the export's parity check
    offline: dict[str, Any]  # training.dcase_metrics.machine_scores + "official"
    levels: np.ndarray | None = None  # RMS dBFS of the training clips, in bank order


def train_model(data: Path, machine: str, sizes: DemoSizes, seed: int, progress: bool) -> Trained:
    """Train the default recipe (simclr) with the demo's step budget; score the test split."""
    from export.package_writer import MachineSpec
    from training import dcase_metrics as metrics
    from training.data import load_clips
    from training.fit import fit_recipe
    from training.recipes.base import RecipeOptions
    from training.train_utils import one_torch_thread

    simclr = {
        "steps": sizes.steps,
        "batch_size": sizes.batch_size,
        "crop_seconds": sizes.crop_seconds,
    }
    opts = RecipeOptions(seed=seed, progress=progress, extra={"simclr": simclr})
    with one_torch_thread():
        fitted = fit_recipe(data, "simclr", opts, machines=[machine], seconds=sizes.clip_seconds)
        md, rec = fitted.machines[machine], fitted.recipe
        test = load_clips(md.test, workers=2, seconds=sizes.clip_seconds)
        scores = np.asarray(rec.score(machine, test), dtype=np.float64)
    labels = np.array([c.label == "anomaly" for c in md.test], int)
    res = metrics.machine_scores(labels, scores, [c.domain for c in md.test])
    res["official"] = metrics.official_score([res])
    arrays = fitted.arrays[machine]
    levels = MachineSpec.levels_of(arrays.waves)
    return Trained(rec, machine, arrays.domains, arrays.waves[:4].copy(), res, levels)


def export_package(trained: Trained, dest: Path, run_dir: Path, sizes: DemoSizes) -> Path:
    """ONNX encoder + bank + calibrated threshold, as `sonitor export --data`; also the run dir
    (`sonitor export --run` rebuilds the package from it)."""
    from export.package_writer import MachineSpec, build_package
    from export.run_dir import save_run
    from training.train_utils import one_torch_thread

    rec, m = trained.recipe, trained.machine
    spec = MachineSpec(
        m, rec.train_embeddings[m], trained.domains, rec.scorers[m], levels=trained.levels
    )
    summary = {"synthetic": True, "machines": {m: {"n_train": len(trained.domains)}}}
    summary["recipe"] = rec.describe()
    kw = {"window_seconds": sizes.clip_seconds, "hop_seconds": sizes.hop_seconds}
    save_run(
        run_dir, recipe=rec.name, model=rec.model, machines=[spec], training_data=summary, **kw
    )
    with one_torch_thread():  # as `sonitor export` (--torch-threads 1)
        path, _ = build_package(
            dest,
            rec.model,
            [spec],
            recipe=rec.name,
            parity_clips=trained.parity_clips,
            training_data=summary,
            **kw,
        )
    return path


# ------------------------------------------------------------------------------ 3. the unit


def unit_spec(machine: str, seconds: float, seed: int) -> Any:
    """The monitored unit: nominal speed, 60 % load, factory background (the source domain)."""
    from training.synth_sound import ClipSpec, recipe_for

    rpm = int(round(recipe_for(machine).rpm / 10) * 10)
    return ClipSpec(machine, "test", "source", "normal", 9999, rpm, 60, "factory", seed,
                          seconds, 1.0)  # fmt: skip


def make_recordings(
    out: Path,
    machine: str,
    sizes: DemoSizes,
    seed: int,
    fault_kind: str | None,
    severity: float,
) -> Recordings:
    """One continuous take of the unit: the first part is enrolled, the rest replayed, with the
    fault (a synth anomaly of this machine) faded in over 0.1 s for `fault_seconds`."""
    from training.synth_sound import draw_fault, render_clip

    replay_s = sizes.normal_seconds + sizes.fault_seconds + sizes.after_seconds
    spec = unit_spec(machine, sizes.enroll_seconds + replay_s, seed)
    normal = render_clip(spec, fault=None)
    e = int(round(sizes.enroll_seconds * SR))
    enroll, replay = normal[:e], normal[e:].copy()
    fault = None
    if fault_kind is not None:
        fault = draw_fault(spec, kind=fault_kind, severity=severity)
        faulty = render_clip(spec, fault=fault)[e:]  # the same take with the fault in it
        a = int(round(sizes.normal_seconds * SR))
        b = a + int(round(sizes.fault_seconds * SR))
        env = np.zeros(replay.size, np.float32)
        env[a:b] = 1.0
        ramp = np.linspace(0.0, 1.0, int(0.1 * SR), dtype=np.float32)
        env[a : a + ramp.size] = ramp
        env[b - ramp.size : b] = ramp[::-1]
        replay += env * (faulty - replay)
    note = f"SYNTHETIC sonitor demo seed={seed}"
    enroll_path = write_wav(out / f"{machine}-normal.wav", enroll, SR, "PCM_16", comment=note)
    replay_path = write_wav(out / f"{machine}-replay.wav", replay, SR, "PCM_16", comment=note)
    return Recordings(
        enroll_path,
        replay_path,
        fault,
        sizes.normal_seconds,
        sizes.normal_seconds + sizes.fault_seconds,
        replay.size / SR,
    )


def enroll_unit(package: Path, machine: str, recording: Path) -> Any:
    """`sonitor enroll --package P --machine M --audio FILE`: the unit's normal sound joins the
    bank and the threshold is recalibrated on all of it."""
    from monitor.model.enroll import enroll

    return enroll(package, machine, [recording], condition="source")


# ------------------------------------------------------------------------------ 4. the daemon

# Alert rules of the demo config: the daemon's defaults (config.example.yaml), written out so
# that the config shows them. Times are seconds of audio for a file replayed as fast as possible.
DEMO_ALERTS: dict[str, Any] = AlertsConfig().model_dump(mode="json")


def write_config(
    path: Path,
    package: Path,
    recordings: Recordings,
    machine: str,
    *,
    mqtt_host: str | None = None,
    mqtt_port: int = 1883,
    topic_prefix: str = "sonitor/demo",
) -> Path:
    """The daemon config: one `type: file` source (not paced: `realtime: false`), metrics off,
    MQTT only when a broker is given. Paths are relative to the config's folder."""
    base = path.parent.resolve()

    def rel(p: Path) -> str:
        p = p.resolve()
        return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)

    source = {
        "name": machine,
        "machine": machine,
        "type": "file",
        "path": rel(recordings.replay_path),
        "realtime": False,
        "loop": False,
    }
    cfg: dict[str, Any] = {
        "node": {"name": "demo"},
        "model": {"package": rel(package), "threads": 1},
        "paths": {"state_dir": rel(path.parent / "state")},
        "sources": [source],
        "alerts": dict(DEMO_ALERTS),
        "metrics": {"enabled": False},
        "logging": {"level": "WARNING"},
    }
    if mqtt_host:
        cfg["mqtt"] = {
            "enabled": True,
            "host": mqtt_host,
            "port": mqtt_port,
            "topic_prefix": topic_prefix,
        }
    head = (
        "# Written by `sonitor demo`: replays a SYNTHETIC recording as fast as inference allows.\n"
        "# For a live run set realtime: true (or use a `type: device` source, see "
        "config.example.yaml).\n"
    )
    path.write_text(head + yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------------------ the command


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `sonitor demo`."""
    from training.synth_sound import ANOMALY_TYPES

    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--machine", default="pump", choices=MACHINES, help="machine type (default pump)"
    )
    p.add_argument(
        "--fault",
        default="bearing",
        choices=ANOMALY_TYPES,
        help="fault injected into the replay (default bearing)",
    )
    p.add_argument(
        "--severity", type=float, default=0.6, help="fault severity in [0, 1] (default 0.6)"
    )
    p.add_argument(
        "--no-fault",
        action="store_true",
        help="replay normal sound only: the demo must then fail (it proves it can)",
    )
    p.add_argument("--mqtt-host", help="publish the alert events to this MQTT broker")
    p.add_argument("--mqtt-port", type=int, default=1883, help="broker port (default 1883)")
    p.add_argument(
        "--topic-prefix", default="sonitor/demo", help="MQTT topic prefix (default sonitor/demo)"
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes (the test suite's)")
    p.add_argument("--steps", type=int, help="SimCLR training steps (overrides the size)")
    p.add_argument("--train-clips", type=int, help="source training clips (overrides the size)")


def sizes_for(args: argparse.Namespace) -> DemoSizes:
    sizes = QUICK if getattr(args, "quick", False) else FULL
    for key, attr in (("steps", "steps"), ("train_source", "train_clips")):
        value = getattr(args, attr, None)
        if value is not None:
            if value < 1:
                raise SonitorError(f"--{attr.replace('_', '-')} must be >= 1, got {value}")
            sizes = replace(sizes, **{key: value})
    return sizes


def run_demo(args: argparse.Namespace, out: Callable[[str], None] | None = None) -> int:
    """Every step of the demo; exit 0 only when the injected fault raised the (only) alert.

    Library INFO logs (export parity reports, enrolment details) are held back while it runs:
    each step prints its own summary line; `sonitor -v demo` shows everything.
    """
    root_logger = logging.getLogger()
    level = root_logger.level
    if level > logging.DEBUG:
        root_logger.setLevel(logging.WARNING)
    try:
        return _run_demo(args, out or (lambda s: print(s, flush=True)))
    finally:
        root_logger.setLevel(level)


def _run_demo(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    sizes = sizes_for(args)
    if not 0.0 <= args.severity <= 1.0:
        raise SonitorError(f"--severity must be in [0, 1], got {args.severity}")
    machine, fault = args.machine, None if args.no_fault else args.fault
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    say(
        f"sonitor demo: SYNTHETIC {machine} sounds -> simclr model -> ONNX package -> enrolment "
        f"-> daemon on a replay with {'an injected ' + fault + ' fault' if fault else 'no fault'}"
    )
    p = Progress(say)

    data = make_data(root / "data", machine, sizes, args.seed)
    n_test = 4 * sizes.test_per_group
    p.done(
        f"SYNTHETIC data: {sizes.train_source} + {sizes.train_target} training and {n_test} test "
        f"clips of {machine}, {sizes.clip_seconds:g} s each, in {data}"
    )

    progress = sys.stderr.isatty()
    trained = train_model(data, machine, sizes, args.seed, progress)
    r = trained.offline
    p.done(
        f"trained simclr (ResNet-18, SimCLR NT-Xent, {sizes.steps} steps of {sizes.batch_size} "
        f"clips); offline DCASE score on the SYNTHETIC test split: official {r['official']:.3f} "
        f"(AUC source {r['auc_source']:.3f}, AUC target {r['auc_target']:.3f}, "
        f"pAUC {r['pauc']:.3f})"
    )

    package = root / "package"
    export_package(trained, package, root / "run", sizes)
    p.done(f"exported the ONNX model package {package} (parity with PyTorch checked)")

    recordings = make_recordings(root, machine, sizes, args.seed, fault, args.severity)
    res = enroll_unit(package, machine, recordings.enroll_path)
    p.done(
        f"enrolled {sizes.enroll_seconds:g} s of the unit's normal sound "
        f"({recordings.enroll_path}): {res.summary()}"
    )

    state = root / "state"
    if state.exists():
        shutil.rmtree(state)  # an earlier run's outbox would replay its events to the broker
    config = write_config(
        root / "config.yaml",
        package,
        recordings,
        machine,
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        topic_prefix=args.topic_prefix,
    )
    what = f"fault ({fault}, severity {args.severity:g}) at {recordings.fault_start:g}-"
    what += f"{recordings.fault_end:g} s" if fault else ""
    say(
        f"replaying {recordings.replay_path} ({recordings.seconds:.0f} s; "
        f"{what if fault else 'no fault'}) through the daemon, as fast as inference allows:"
    )
    p.restart_step()
    run = run_replay(config, recordings, say)
    ok, verdict = judge(run, recordings, sizes.hop_seconds)
    if run.published is not None:
        where = f"{args.mqtt_host}:{args.mqtt_port} topic {run.topic}"
        if run.published:
            say(f"MQTT: {len(run.events)} event message(s) acknowledged by {where}")
        else:
            ok = False
            verdict = (
                f"FAIL: the broker {where} did not acknowledge every event within 10 s (is it "
                f"running and reachable?); detection alone: {verdict}"
            )
    p.done(f"daemon scored {len(run.windows)} windows of {run.window_seconds:g} s; {verdict}")

    say("\nwhere everything is:")
    for label, path in (
        ("data set", data),
        ("trained run", root / "run"),
        ("model package", package),
        ("daemon config", config),
        ("enrolment WAV", recordings.enroll_path),
        ("replay WAV", recordings.replay_path),
        ("event clips", state / "clips"),
    ):
        say(f"  {label:<14} {path}")
    say("next:")
    say(f"  sonitor score --package {package} --machine {machine} {recordings.replay_path}")
    say(f"  sonitor check-config {config}")
    say(f"  sonitor run --config {config}     # the same replay (Ctrl-C to stop)")
    say(f"  sonitor enroll --package {package} --machine {machine} --audio YOUR-RECORDINGS/")
    say("\nresult:")
    for e in run.events:
        if e.event.kind == "anomaly" and e.event.type in ("start", "end"):
            say("  " + describe_event(e, recordings))
    say("  " + verdict)
    return 0 if ok else 1
