"""Crash consistency: a child writing alerts, acks and clips is SIGKILLed at random moments.

Each iteration forks a child that does what a daemon does at start and then at work, on one
state folder shared by the whole chain of crashes: it opens the outbox (SQLite recovery of the
previous kill), ends the alerts the previous child left open (reason ``restart``, as
``Outputs.start`` does), then runs an alert machine on random scores and publishes its events
through the real ``MqttClient.publish_event`` path (no broker: the client is not started), puts
and acknowledges filler messages, and writes clips with the real ``ClipWriter``. After each
operation returns, the child reports it on a pipe. The parent kills it after a random delay and
checks, from the files alone:

- the outbox opens (quick_check) and every message reported as stored is there, every
  acknowledged one is gone;
- per alert, the stored messages have ``seq`` 0..n without a gap or a duplicate, at most one
  ``end`` and only as the last message; the alert is in the open-alert table exactly when its
  last message is not an ``end``, with that message as its latest payload (one transaction);
- every clip under its final name is whole (the WAV decodes to exactly the samples written, the
  sidecar parses) and the next writer's scan leaves no temporary file behind.

At the end every alert has exactly one ``end``. SIGKILL keeps the page cache, so this checks
atomicity and ordering, not the fsyncs that power loss needs (tests/test_crash_fsync.py checks
those are made, in order). ``SONITOR_CRASH_ITERATIONS`` sets the count (default 200: about
30 s on 2 busy cores).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitor.alerting.clips import ClipJob, ClipPolicy, ClipWriter
from monitor.alerting.machine import AlertMachine, AlertPolicy
from monitor.outputs.mqtt.client import MqttClient
from monitor.outputs.mqtt.settings import MqttSettings
from monitor.outputs.open_alerts import end_open_alerts
from monitor.outputs.outbox import Outbox
from monitor.outputs.payloads import event_payload

ITERATIONS = int(os.environ.get("SONITOR_CRASH_ITERATIONS", "200"))
MAX_DELAY_S = 0.15  # kills land while opening, while ending old alerts, and at work
pytestmark = pytest.mark.timeout(60 + ITERATIONS)


def settings(state: Path) -> MqttSettings:
    # unbounded: nothing may be dropped, so every message ever stored can be checked
    return MqttSettings(
        outbox_path=state / "outbox.sqlite", outbox_max_rows=10**9, outbox_max_bytes=10**12
    )


def clip_policy(state: Path) -> ClipPolicy:
    return ClipPolicy(state / "clips", max_total_bytes=10**12, min_free_bytes=0)


def clip_audio(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, n).astype(np.float32)


# --------------------------------------------------------------------------- the child


def child(state: Path, iteration: int, out: int) -> None:
    """The daemon-like writer; runs until killed. Reports each operation once it returned."""
    rng = random.Random(iteration)

    def report(line: str) -> None:
        os.write(out, (line + "\n").encode())

    report("phase open")
    client = MqttClient(settings(state))
    report("phase restart")
    end_open_alerts(
        client.outbox,
        lambda ev, payload: report(f"event {client.publish_event(ev.source, payload)}"),
    )
    report("phase work")
    writer = ClipWriter(clip_policy(state))
    source = f"s{iteration}"  # event ids stay unique along the chain
    machine = AlertMachine(
        source, AlertPolicy(n_above=2, m_windows=3, k_below=2, min_hold_s=0, cooldown_s=0,
                            update_interval_s=1.0, peak_step=0.3)
    )  # fmt: skip
    t = 1_700_000_000.0 + iteration * 10_000
    for step in range(1_000_000):
        t += 0.5
        score = rng.choice([0.2, 0.5, 1.2, 1.6, 2.5])
        for ev in machine.step(t, score, healthy=rng.random() > 0.03):
            row = client.publish_event(source, event_payload(ev, threshold=0.5))
            report(f"event {row}")
        if step % 3 == 0:
            row = client.outbox.put("x/filler", b"f%d" % step)
            report(f"put {row}")
            client.outbox.ack(row)
            report(f"ack {row}")
        if step % 4 == 1:
            seed = iteration * 100_000 + step
            n = rng.randrange(800, 8000)
            name = f"c{seed}.wav"
            writer.write(ClipJob(name, clip_audio(seed, n), {"seed": seed, "n": n}))
            report(f"clip {name}")


def run_child(state: Path, iteration: int, delay: float) -> list[str]:
    """Fork the child, SIGKILL it after ``delay`` s, return its report lines."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(r)
        code = 0
        try:
            child(state, iteration, w)
        except BaseException:  # noqa: BLE001 - the parent sees the missing kill
            import traceback

            traceback.print_exc()
            code = 3
        os._exit(code)
    os.close(w)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    chunks = []
    while data := os.read(r, 65536):
        chunks.append(data)
    os.close(r)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    return b"".join(chunks).decode().splitlines()


# --------------------------------------------------------------------------- the checks


@dataclass
class Tally:
    """What survived, over the whole chain (printed at the end)."""

    kills: collections.Counter[str] = field(default_factory=collections.Counter)
    events_reported: int = 0
    events_unreported: int = 0  # committed, killed before the report: kept, as it must be
    puts_reported: int = 0
    acks_reported: int = 0
    acks_unreported: int = 0  # committed, killed before the report
    restart_ends: int = 0
    clips_reported: int = 0
    clips_unreported: int = 0  # whole, written just before the kill
    wav_without_sidecar: int = 0  # killed between the two renames: a whole WAV, no sidecar
    temp_files_cleaned: int = 0
    checks: int = 0


@dataclass
class Model:
    """The parent's view of the chain: stored event rows per alert, reported ids."""

    seen_upto: int = 0  # outbox ids already read (event rows are never acknowledged)
    rows: dict[str, list[tuple[int, int, str, str | None, bytes]]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    acked: set[int] = field(default_factory=set)
    clips: set[str] = field(default_factory=set)


def check_outbox(state: Path, lines: list[str], model: Model, tally: Tally) -> None:
    events = {int(x.split()[1]) for x in lines if x.startswith("event ")}
    puts = {int(x.split()[1]) for x in lines if x.startswith("put ")}
    acks = {int(x.split()[1]) for x in lines if x.startswith("ack ")}
    model.acked |= acks
    box = Outbox(settings(state).outbox_path, max_rows=10**9, max_bytes=10**12)  # quick_check
    try:
        pending = box.pending()
        present = {m.id for m in pending}
        assert events <= present, f"stored events lost: {sorted(events - present)}"
        # the ack of the last put may have committed just before the kill, unreported
        in_flight = {max(puts)} - acks if puts else set()
        lost = puts - acks - in_flight - present
        assert not lost, f"stored messages lost: {sorted(lost)}"
        tally.acks_unreported += len(in_flight - present)
        assert not (model.acked & present), f"acknowledged came back: {model.acked & present}"
        for m in pending:
            if m.id <= model.seen_upto or m.topic == "x/filler":
                continue
            p = json.loads(m.payload)
            model.rows[p["id"]].append((m.id, p["seq"], p["type"], p["reason"], m.payload))
            tally.events_unreported += m.id not in events
            tally.restart_ends += p["reason"] == "restart"
        model.seen_upto = max([model.seen_upto, *present])
        open_now = dict(box.open_alerts())
        for event_id, rows in model.rows.items():
            assert [r[1] for r in rows] == list(range(len(rows))), (event_id, rows)
            types = [r[2] for r in rows]
            assert types.count("end") <= 1 and "end" not in types[:-1], (event_id, types)
            if types[-1] == "end":
                assert event_id not in open_now, event_id
            else:
                assert open_now.get(event_id) == rows[-1][4], event_id
        assert set(open_now) <= set(model.rows)
    finally:
        box.close()
    tally.events_reported += len(events)
    tally.puts_reported += len(puts)
    tally.acks_reported += len(acks)


def check_clips(state: Path, lines: list[str], model: Model, tally: Tally) -> None:
    folder = state / "clips"
    if not folder.exists():
        return
    model.clips |= {x.split()[1] for x in lines if x.startswith("clip ")}
    tally.clips_reported += sum(x.startswith("clip ") for x in lines)
    temp = [p for p in folder.iterdir() if p.name.startswith(".")]
    final = [p for p in folder.iterdir() if not p.name.startswith(".")]
    for wav in (p for p in final if p.suffix == ".wav"):
        side = wav.with_suffix(".json")
        if not side.exists():
            assert wav.name not in model.clips, f"{wav.name} reported, its sidecar is missing"
            audio, _ = sf.read(wav, dtype="float32")  # whole: as many samples as its header says
            seed = int(wav.stem[1:])
            np.testing.assert_allclose(audio, clip_audio(seed, audio.size), atol=1 / 32767)
            tally.wav_without_sidecar += 1
            wav.unlink()  # counted once
            continue
        meta = json.loads(side.read_text())
        audio, sr = sf.read(wav, dtype="float32")
        assert sr == 16000 and audio.shape == (meta["n"],), (wav.name, audio.shape, meta)
        np.testing.assert_allclose(audio, clip_audio(meta["seed"], meta["n"]), atol=1 / 32767)
        if wav.name not in model.clips:
            tally.clips_unreported += 1
            model.clips.add(wav.name)
    for json_path in (p for p in final if p.suffix == ".json"):
        assert json_path.with_suffix(".wav").exists(), f"sidecar without its WAV: {json_path}"
    for name in model.clips:
        assert (folder / name).exists(), f"reported clip {name} is missing"
    ClipWriter(clip_policy(state)).enforce_retention()  # what the next start's writer does
    left = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert left == [], f"temporary files survive the scan: {left}"
    tally.temp_files_cleaned += len(temp)


def test_sigkill_at_random_points_loses_nothing_stored_and_ends_alerts_once(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    rng = random.Random(1234)
    model, tally = Model(), Tally()
    t0 = time.monotonic()
    for i in range(ITERATIONS):
        lines = run_child(state, i, rng.uniform(0.0, MAX_DELAY_S))
        phases = [x.split()[1] for x in lines if x.startswith("phase ")]
        tally.kills[phases[-1] if phases else "start"] += 1
        check_outbox(state, lines, model, tally)
        check_clips(state, lines, model, tally)
        tally.checks += 1
    # one last restart, in this process, then every alert has exactly one end
    box = Outbox(settings(state).outbox_path, max_rows=10**9, max_bytes=10**12)
    client = MqttClient(settings(state), outbox=box)
    final = end_open_alerts(box, lambda ev, p: client.publish_event(ev.source, p))
    assert box.open_alerts() == []
    ends = collections.Counter()
    for m in box.pending():
        p = json.loads(m.payload) if m.topic != "x/filler" else {}
        if p.get("type") == "end":
            ends[p["id"]] += 1
    box.close()
    alerts = set(model.rows)
    assert set(ends) == alerts and set(ends.values()) == {1}, ends
    elapsed = time.monotonic() - t0
    print(
        f"\nrandom SIGKILL x{ITERATIONS} in {elapsed:.1f} s; kills during {dict(tally.kills)}\n"
        f"outbox: {tally.events_reported} events + {tally.puts_reported} fillers reported "
        f"stored, all found; {tally.acks_reported} acks held (+{tally.acks_unreported} committed "
        f"unreported); {tally.events_unreported} events committed but killed before the report "
        f"(kept)\n"
        f"alerts: {len(alerts)}, {tally.restart_ends} ended on restart + {final} at the last "
        f"start, each exactly one end\n"
        f"clips: {tally.clips_reported} reported, all whole; {tally.clips_unreported} whole but "
        f"unreported; {tally.wav_without_sidecar} WAV without sidecar; "
        f"{tally.temp_files_cleaned} temporary files removed by the next scan"
    )
    assert tally.kills["work"] > ITERATIONS // 4  # the kills did land at work
