"""Markdown tables of the false-alarm benchmark, from the trials of `fab_replay`.

Rows are per machine and operating condition: the normal parts of one condition are summed, so
"hours" is all the normal audio of that condition that was replayed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from fab_replay import (
    Setting,
    Start,
    Stream,
    StreamResult,
    StreamRun,
    TrialRun,
    analyse,
    matches,
    resimulate,
)

Group = tuple[str, str, bool]  # machine, condition, synthetic


def group(s: Stream) -> Group:
    return (s.machine, s.condition, s.synthetic)


def who(g: Group) -> str:
    return f"{g[0]} / {g[1]} ({'SYNTHETIC' if g[2] else 'REAL'})"


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None or x != x else format(x, spec)


def upper95(n: int, hours: float) -> float:
    """One-sided 95 % upper bound on a Poisson rate per hour after ``n`` events in ``hours``."""
    from scipy.stats import chi2

    return float(chi2.ppf(0.95, 2 * n + 2) / 2 / hours) if hours > 0 else float("nan")


@dataclass
class Summary:
    """Stream results of one group added up."""

    seconds: float = 0.0
    starts: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    above: int = 0
    peak: float = float("nan")

    def add(self, r: StreamResult) -> None:
        self.seconds += r.normal_seconds
        for k, v in r.false_starts.items():
            self.starts[k] = self.starts.get(k, 0) + v
        self.windows += r.windows_normal
        self.above += r.above_normal
        if r.peak_normal == r.peak_normal:
            self.peak = r.peak_normal if self.peak != self.peak else max(self.peak, r.peak_normal)

    @property
    def hours(self) -> float:
        return self.seconds / 3600


def results(
    trial: TrialRun,
    sim: dict[str, list[Start]] | None = None,
    n_of_m: tuple[int, int] | None = None,
) -> dict[str, StreamResult]:
    nm = n_of_m or trial.n_of_m
    return {
        n: analyse(r, trial.window_s, trial.hop_s, nm, None if sim is None else sim[n])
        for n, r in trial.runs.items()
    }


def by_group(res: dict[str, StreamResult], variant: str) -> dict[Group, Summary]:
    out: dict[Group, Summary] = {}
    for r in res.values():
        if r.stream.variant == variant:
            out.setdefault(group(r.stream), Summary()).add(r)
    return out


# ------------------------------------------------------------------------------ 1. normal audio


def normal_table(trial: TrialRun, weekly: float) -> list[str]:
    rows = [
        "| machine / condition | hours of normal audio | anomaly starts | level starts | starts "
        "per hour | 95 % upper bound per hour | windows >= threshold | peak score (x threshold) "
        "| threshold (raw) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g, s in by_group(results(trial), "normal").items():
        n = s.starts.get("anomaly", 0)
        other = {k: v for k, v in s.starts.items() if k not in ("anomaly", "level")}
        name = next(r.stream.name for r in trial.runs.values() if group(r.stream) == g)
        thr = trial.thresholds[name].get(g[1], float("nan"))
        rows.append(
            f"| {who(g)} | {s.hours:.2f} | {n} | {s.starts.get('level', 0)} | "
            f"{n / s.hours:.3f} | {upper95(n, s.hours):.2f} | {s.above} of {s.windows} | "
            f"{fmt(s.peak, '.2f')} | {thr:.4g} |" + (f" other kinds: {other}" if other else "")
        )
    rows += [
        "",
        f"Budget: {weekly:g} false alarm(s) per week = {weekly / 168:.4f} per hour. Zero starts "
        "in H hours bounds the rate below 3.0/H per hour (95 %): proving the budget itself "
        f"takes about {3 * 168 / weekly:.0f} hours of normal audio per condition.",
    ]
    return rows


# ------------------------------------------------------------------------------ 2. faults


def fault_table(trials: dict[str, TrialRun]) -> list[str]:
    labels = list(trials)
    res = {lab: results(t) for lab, t in trials.items()}
    rows = [
        "| machine / condition | fault | onset (s) | "
        + " | ".join(f"delay, {lab} (s)" for lab in labels)
        + " | peak score in the fault's reach |",
        "|---|---|---|" + "---|" * len(labels) + "---|",
    ]
    extra = []
    for name, r0 in res[labels[0]].items():
        if r0.stream.variant != "faults":
            continue
        for k, f in enumerate(r0.faults):
            cells = []
            for lab in labels:
                r = res[lab].get(name)
                cells.append("-" if r is None else r.faults[k].outcome)
            rows.append(
                f"| {who(group(r0.stream))} | {f.fault.label} | {f.fault.start:.1f} | "
                + " | ".join(cells)
                + f" | {fmt(f.peak, '.2f')} |"
            )
        false = {
            lab: sum(res[lab][name].false_starts.values()) for lab in labels if name in res[lab]
        }
        extra.append(f"{name}: {false}")
    rows += ["", "Starts in the normal audio between the faults: " + "; ".join(extra) + "."]
    return rows


# ------------------------------------------------------------------------------ 3. settings


def sweep_table(
    trial: TrialRun,
    settings: Sequence[Setting],
    package: Path,
    workdir: Path,
    replayed: dict[str, TrialRun],
) -> tuple[list[str], dict[str, bool]]:
    """Every setting over the first replay's recorded scores; the replayed ones are reported
    from the broker and their re-simulation checked against it."""
    groups = list(by_group(results(trial), "normal"))
    hours = by_group(results(trial), "normal")
    rows = [
        "| setting | N of M | measured by | "
        + " | ".join(f"false starts, {who(g)} ({hours[g].hours:.2f} h)" for g in groups)
        + " | alarms at bursts (<= 2 s / longer) | faults detected (alarm already open) | "
        "delay median / max (s) |",
        "|---|---|---|" + "---|" * len(groups) + "---|---|---|",
    ]
    checks = {}
    for k, st in enumerate(settings):
        sim, nm, _ = resimulate(trial, package, st.alerts, workdir / f"resim-{k}", st.correlation)
        how = "re-simulated"
        res = results(trial, sim, nm)
        if st.label in replayed:
            checks[st.label] = ok = matches(replayed[st.label], sim)
            how = f"daemon + MQTT (re-simulation {'matches' if ok else 'DIFFERS'})"
            res = results(replayed[st.label])
        normal = by_group(res, "normal")
        cells = [str(sum(normal[g].starts.values())) if g in normal else "-" for g in groups]
        bursts = [(x.end - x.start, c) for r in res.values() for x, c in r.burst_alarms]
        short = [c for d, c in bursts if d <= 2.0]
        long_ = [c for d, c in bursts if d > 2.0]
        faults = [f for r in res.values() for f in r.faults]
        got = [f.delay for f in faults if f.delay is not None]
        opened = sum(f.delay is None and f.open_since is not None for f in faults)
        rows.append(
            f"| {st.label} | {nm[0]} of {nm[1]} | {how} | "
            + " | ".join(cells)
            + f" | {sum(short)} of {len(short)} / {sum(long_)} of {len(long_)} | "
            f"{len(got)} of {len(faults)} ({opened}) | "
            + (f"{statistics.median(got):.1f} / {max(got):.1f}" if got else "-")
            + " |"
        )
    return rows, checks


# ------------------------------------------------------------------------------ 4. variants


def truncate(run: StreamRun, seconds: float) -> StreamRun:
    """The first ``seconds`` of a replayed stream (the 0 dB reference of its variants)."""
    short = StreamRun(replace(run.stream, seconds=seconds, variant="0 dB"), run.offset)
    short.windows = [w for w in run.windows if w.t <= seconds]
    if run.offset is not None:
        short.payloads = [p for p in run.payloads if float(p["time"]) - run.offset <= seconds]
    return short


def variant_table(trials: dict[str, TrialRun]) -> list[str]:
    labels = list(trials)
    first = trials[labels[0]]
    rows = [
        "| machine / condition | audio | hours | "
        + " | ".join(f"anomaly starts, {lab}" for lab in labels)
        + " | level starts | windows >= threshold | peak score |",
        "|---|---|---|" + "---|" * len(labels) + "---|---|---|",
    ]
    done = set()
    for run in first.runs.values():
        s = run.stream
        if not s.base:
            continue
        if s.base not in done:  # the same audio without gain or bursts
            done.add(s.base)
            refs = {
                lab: truncate(t.runs[s.base], s.base_seconds)
                for lab, t in trials.items()
                if s.base in t.runs
            }
            rows.append(_variant_row(refs, trials, "unchanged (0 dB)"))
        runs = {lab: t.runs[s.name] for lab, t in trials.items() if s.name in t.runs}
        rows.append(_variant_row(runs, trials, s.variant))
    return rows


def _variant_row(runs: dict[str, StreamRun], trials: dict[str, TrialRun], what: str) -> str:
    res = {
        lab: analyse(r, trials[lab].window_s, trials[lab].hop_s, trials[lab].n_of_m)
        for lab, r in runs.items()
    }
    base = next(iter(res.values()))
    cells = []
    for lab in trials:
        r = res.get(lab)
        if r is None:
            cells.append("-")
            continue
        at = sum(c for _, c in r.burst_alarms)
        cells.append(
            f"{r.false_starts.get('anomaly', 0)}"
            + (f" (+{at} at bursts)" if r.burst_alarms else "")
        )
    other = {k: v for k, v in base.false_starts.items() if k not in ("anomaly", "level")}
    return (
        f"| {who(group(base.stream))} | {what} | {base.stream.seconds / 3600:.2f} | "
        + " | ".join(cells)
        + f" | {base.false_starts.get('level', 0)}{f' (other kinds: {other})' if other else ''} | "
        f"{base.above_normal} of {base.windows_normal} | {fmt(base.peak_normal, '.2f')} |"
    )


def burst_table(trials: dict[str, TrialRun]) -> list[str]:
    labels = list(trials)
    per: dict[tuple[Group, float], dict[str, list[int]]] = {}
    for lab, t in trials.items():
        for name, r in results(t).items():
            if t.runs[name].stream.variant != "bursts":
                continue
            for x, c in r.burst_alarms:
                key = (group(r.stream), round(x.end - x.start, 2))
                per.setdefault(key, {}).setdefault(lab, []).append(c)
    rows = [
        "| machine / condition | burst length (s) | bursts | "
        + " | ".join(f"alarms raised, {lab}" for lab in labels)
        + " |",
        "|---|---|---|" + "---|" * len(labels),
    ]
    for (g, d), by in sorted(per.items()):
        n = len(by[labels[0]])
        rows.append(
            f"| {who(g)} | {d:g} | {n} | "
            + " | ".join(str(sum(by[lab])) if lab in by else "-" for lab in labels)
            + " |"
        )
    return rows
