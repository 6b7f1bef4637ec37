"""From windows to alerts: `windows:`, `inference:`, `scoring:`, `alerts:` and `clips:`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from monitor.config.base import ConfPath, Strict


class WindowsConfig(Strict):
    window_seconds: float | None = Field(
        None,
        gt=0.0,
        le=60.0,
        description="Analysis window length, seconds; null = the package's window.",
    )
    hop_seconds: float | None = Field(
        None, gt=0.0, le=60.0, description="Hop between windows, seconds; null = the package's hop."
    )

    @model_validator(mode="after")
    def _hop_le_window(self) -> WindowsConfig:
        w, h = self.window_seconds, self.hop_seconds
        if w is not None and h is not None and h > w:
            raise ValueError(f"hop_seconds ({h}) must not exceed window_seconds ({w})")
        return self


class InferenceConfig(Strict):
    max_batch: int = Field(
        8, ge=1, le=256, description="Most windows (of all sources) in one encoder call."
    )
    max_pending_windows: int = Field(
        32,
        ge=1,
        le=10000,
        description="Windows waiting for inference; beyond this the oldest are dropped (counted). "
        "Keep it >= 2x the number of sources: every source completes a window each hop.",
    )


class ScoringConfig(Strict):
    smoothing: Literal["ema", "median", "none"] = Field(
        "ema", description="Smoothing of the normalised score: ema, median (of the last n), none."
    )
    ema_alpha: float = Field(
        0.3, gt=0.0, le=1.0, description="EMA weight of the newest window (1 = no smoothing)."
    )
    median_windows: int = Field(
        5, ge=1, le=1000, description="Windows in the running median (smoothing: median)."
    )
    alert_on: Literal["smoothed", "normalised"] = Field(
        "normalised",
        description="Score fed to the alert state machine (its N-of-M rule already debounces).",
    )


class AlertsConfig(Strict):
    on_threshold: float = Field(
        1.0, gt=0.0, description="Normalised score at or above which a window counts as anomalous."
    )
    off_threshold: float = Field(
        0.8, gt=0.0, description="Normalised score below which a window counts as normal again."
    )
    critical_threshold: float = Field(
        2.0,
        gt=0.0,
        description="Critical severity when N of the last M windows reach this normalised score.",
    )
    n_of_m: tuple[int, int] | None = Field(
        None,
        description="[N, M]: raise when N of the last M windows are anomalous; null = "
        "the persistence rule: N one more than the windows a sound of burst_seconds can touch "
        "(13 of 15 for 10 s windows every 1 s), so a brief foreign sound never raises an alarm.",
    )
    burst_seconds: float = Field(
        2.0,
        ge=0.0,
        le=60.0,
        description="Sounds up to this long (a dropped tool, a horn, a voice) never raise an "
        "anomaly alarm when n_of_m is null; longer ones delay every alarm by about as much.",
    )
    level_shift_db: float | None = Field(
        3.0,
        gt=0.0,
        le=60.0,
        description="Level rule: a `level` event (not an anomaly) when the window level "
        "differs from the matched condition's enrolled level by more than this many dB beyond "
        "the natural take-to-take variation of its enrolled recordings (their 99 % prediction "
        "bound, typically 1-2 dB), under the same N-of-M, hold and cooldown; a change of this "
        "size or less alone never raises one. The anomaly score itself ignores the level. "
        "null = off.",
    )
    false_alarms_per_week: float | None = Field(
        None,
        gt=0.0,
        description="False-alarm budget per source: each operating condition's threshold is "
        "set so that normal sound raises at most this many alarms a week under the alert rule "
        "above; null = the model package's (1 unless exported otherwise).",
    )
    clear_windows: int = Field(
        5, ge=1, le=10000, description="Consecutive normal windows needed to end an event."
    )
    min_hold_seconds: float = Field(
        10.0, ge=0.0, description="An event lasts at least this long before it can end."
    )
    cooldown_seconds: float = Field(
        30.0, ge=0.0, description="After an end, no new event for the same source this long."
    )
    update_interval_seconds: float = Field(
        60.0, ge=0.0, description="Periodic `update` events while an event is open (0 = never)."
    )
    peak_step: float = Field(
        0.5,
        ge=0.0,
        description="Send an `update` when the peak normalised score rises this much (0 = never).",
    )
    invalid_limit: int = Field(
        10,
        ge=1,
        description="Consecutive invalid (NaN/inf) scores that end an open event.",
    )
    capture_alarm_delay_seconds: float = Field(
        0.0, ge=0.0, description="Capture must stay unhealthy this long before a capture alarm."
    )

    @field_validator("n_of_m")
    @classmethod
    def _n_of_m(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is None:
            return value
        n, m = value
        if not 1 <= n <= m <= 10000:
            raise ValueError(f"must be [N, M] with 1 <= N <= M <= 10000, got [{n}, {m}]")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AlertsConfig:
        if self.off_threshold > self.on_threshold:
            raise ValueError(
                f"off_threshold ({self.off_threshold}) must not exceed on_threshold "
                f"({self.on_threshold})"
            )
        if self.critical_threshold < self.on_threshold:
            raise ValueError(
                f"critical_threshold ({self.critical_threshold}) must be >= on_threshold "
                f"({self.on_threshold})"
            )
        return self


class ClipsConfig(Strict):
    enabled: bool = Field(True, description="Write a WAV clip + JSON sidecar for every event.")
    dir: ConfPath | None = Field(None, description="Clip folder; null = <state_dir>/clips.")
    pre_roll_seconds: float = Field(5.0, ge=0.0, le=600.0, description="Audio before the start.")
    post_roll_seconds: float = Field(5.0, ge=0.0, le=600.0, description="Audio after the end.")
    max_event_seconds: float = Field(
        120.0, gt=0.0, le=3600.0, description="Longest clip body; longer events are truncated."
    )
    max_age_days: float = Field(30.0, gt=0.0, description="Clips older than this are deleted.")
    max_total_bytes: int = Field(
        1_000_000_000, gt=0, description="Oldest clips are deleted beyond this total size."
    )
    min_free_bytes: int = Field(
        100_000_000, ge=0, description="Oldest clips are deleted to keep this much disk free."
    )
    retention_interval_seconds: float = Field(
        900.0, gt=0.0, description="Retention also runs on this timer (clips age without writes)."
    )
