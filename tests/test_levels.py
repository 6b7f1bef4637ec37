"""The level rule's reference (`monitor.model.levels`): every take weighs the same, its natural
variation comes from takes, not from the near-identical windows of one take, and a change of
``shift_db`` alone stays below the threshold while a larger one crosses it."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.model.levels import MIN_CHUNKS, level_reference


def takes(rng: np.random.Generator, n_takes: int, windows: int, between: float, within: float):
    """Window levels of ``n_takes`` recordings of one machine: a level per take, and small
    window-to-window noise around it."""
    centres = -25.0 + between * rng.standard_normal(n_takes)
    levels = np.concatenate([c + within * rng.standard_normal(windows) for c in centres])
    groups = np.repeat(np.arange(n_takes), windows)
    return levels, groups


def test_every_recording_weighs_the_same() -> None:
    # one long take at -20 dBFS and ten short ones at -30: the reference is the takes' median
    levels = np.concatenate([np.full(300, -20.0), np.full(30, -30.0)])
    groups = np.concatenate([np.zeros(300, int), np.repeat(np.arange(1, 11), 3)])
    ref = level_reference(levels, groups)
    assert ref is not None and ref.level == pytest.approx(-30.0) and ref.takes == 11


def test_one_recording_is_cut_into_chunks_and_unknown_levels_are_ignored() -> None:
    levels = np.linspace(-26.0, -24.0, 100)  # a slow drift over one recording
    levels[::10] = np.nan
    ref = level_reference(levels, np.zeros(100, int))
    assert ref is not None and ref.takes == MIN_CHUNKS
    assert ref.level == pytest.approx(-25.0, abs=0.1)
    assert ref.spread > 0.3  # the drift counts as natural variation
    assert level_reference(np.array([np.nan, -20.0, -21.0]), np.zeros(3, int)) is None


def test_the_spread_is_between_takes_not_within_one() -> None:
    rng = np.random.default_rng(0)
    levels, groups = takes(rng, 12, 60, between=1.0, within=0.1)
    ref = level_reference(levels, groups)
    assert ref is not None and 0.6 < ref.spread < 1.6
    # the windows alone (one pooled spread) would call the same takes ten times steadier
    one = level_reference(levels, np.arange(levels.size))
    assert one is not None and one.takes == levels.size


@pytest.mark.parametrize("between", [0.2, 0.7, 1.2])
def test_three_db_alone_stays_below_the_threshold_and_a_large_change_crosses_it(
    between: float,
) -> None:
    """Fresh normal takes of the same machine, moved by a gain, against a reference enrolled
    from 10 other takes: at +-3 dB (the default `level_shift_db`) nearly every window stays
    within the threshold; at +-9 dB at least 90 % of windows cross it (the rest: takes 2+ sd
    off)."""
    rng = np.random.default_rng(int(between * 10))
    hits = {3.0: 0, 9.0: 0}
    n = 0
    for _ in range(40):
        ref = level_reference(*takes(rng, 10, 30, between, 0.3))
        assert ref is not None
        fresh, _ = takes(rng, 5, 30, between, 0.3)
        thr = ref.threshold_db(3.0)
        for gain in hits:
            for sign in (-1.0, 1.0):
                hits[gain] += int(np.sum(np.abs(fresh + sign * gain - ref.level) > thr))
        n += 2 * fresh.size
    assert hits[3.0] / n < 0.01
    assert hits[9.0] / n > 0.9
