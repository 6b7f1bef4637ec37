"""One small interface for everything the daemon tells the outside world, and the one loop that
fans each update out to every output.

Why: a scored window produces up to three kinds of update (the window's own result, the alert
lifecycle events it triggered, the source's new state), and capture health produces a fourth.
MQTT, Sparkplug B, Home Assistant, Prometheus and whatever a caller plugs in (the demo's printer,
a test's recorder) each want some of them. Each output is a `Sink` that overrides only the
methods it cares about; the daemon hands every update to one `Dispatcher`, which calls the sinks
in a fixed order. A new output is one class; no daemon method changes.

Order, per source: a window's `on_window` comes first, then that window's events (in the order
the alert machine produced them), then the state that follows from them. Sinks are called in the
order they were given; the daemon puts MQTT before Prometheus, so an event is counted only once
the MQTT outbox holds it.

Threads: every `on_*` method runs on the daemon's inference thread and must not block (queue the
work, set a flag); `stop` runs on the main thread during shutdown. Commands travel the other way:
a sink that receives them (MQTT) passes each to the receiver given to `subscribe`, which routes it
back to the daemon; that call comes from the sink's own thread and must be short too. Payloads are
shared by all sinks: read them, never modify them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from monitor.alerting.machine import AlertEvent, AlertStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowResult:
    """What one window came to: its scores, the alert status after it, or why it was skipped.

    ``start_sample``/``end_sample`` are on the source's sample clock (16 kHz since its capture
    started); ``t`` is the alert clock at the window's end (epoch seconds: wall time for real-time
    sources, audio time for files replayed as fast as possible). Scores are NaN when the window was
    not scored; ``normalised`` = raw / threshold (1.0 = at the threshold). ``ready_monotonic`` is
    when its last sample was read (monotonic clock), for latency measurements.
    """

    source: str
    start_sample: int
    end_sample: int
    t: float
    raw: float
    normalised: float
    smoothed: float
    threshold: float
    level_dbfs: float
    healthy: bool
    skipped: str | None  # "unhealthy", "silent", "clipped", "nonfinite_audio"; None = scored
    status: AlertStatus
    model_version: str
    ready_monotonic: float
    condition: str | None = None  # the operating condition it matched (None: not scored)


@dataclass(frozen=True)
class Command:
    """A command from an output (MQTT): ``args`` is the JSON object payload ({} when empty)."""

    verb: str
    source: str | None
    args: dict[str, Any]
    topic: str


CommandReceiver = Callable[[Command], None]
EventItem = tuple[AlertEvent, dict[str, Any]]  # an event and its `event_payload(...)`


class Sink:
    """An output of the daemon. Every method is a no-op here: override the ones you need."""

    def on_window(self, result: WindowResult) -> None:
        """Every window of every source, scored or skipped."""

    def on_event(self, event: AlertEvent, payload: dict[str, Any]) -> None:
        """One alert lifecycle message; ``payload`` is its versioned form (clip name included)."""

    def on_state(self, source: str, payload: dict[str, Any]) -> None:
        """The source's latest window and alarm state (at most every state interval, and after
        every event)."""

    def on_health(self, source: str, payload: dict[str, Any]) -> None:
        """The source's capture health (when it changes, and every 30 s)."""

    def on_sources(self, machines: Mapping[str, str]) -> None:
        """A reload changed the configured sources: source name -> machine, in config order."""

    def subscribe(self, receiver: CommandReceiver) -> None:
        """Pass every command this output receives to ``receiver`` (outputs without commands
        ignore it)."""

    def stop(self, timeout: float) -> None:
        """Deliver what is pending (up to ``timeout`` seconds) and release the connection."""


S = TypeVar("S", bound=Sink)


class Dispatcher:
    """Fans every update out to the sinks in one loop and routes commands back to the daemon.

    One sink that raises does not stop the others: the error is logged and the next sink runs.
    """

    def __init__(
        self, sinks: Iterable[Sink] = (), on_command: CommandReceiver | None = None
    ) -> None:
        self._on_command = on_command
        self.sinks: list[Sink] = [self.attach(sink) for sink in sinks]

    def attach(self, sink: S) -> S:
        """Route ``sink``'s commands to the daemon (before it connects: none is missed); the
        caller puts it into `sinks`."""
        sink.subscribe(self.receive)
        return sink

    # ------------------------------------------------------------------ updates out
    def window(
        self, result: WindowResult, events: Sequence[EventItem], state: dict[str, Any] | None
    ) -> None:
        """One window: its result, then its events, then the state (None: no state due)."""
        for sink in self.sinks:
            self.guarded(sink, "on_window", sink.on_window, result)
        self.events(result.source, events, state)

    def events(
        self, source: str, events: Sequence[EventItem], state: dict[str, Any] | None
    ) -> None:
        """Events of one source (not tied to a window: health, commands, reload, shutdown),
        then its state."""
        for event, payload in events:
            for sink in self.sinks:
                self.guarded(sink, "on_event", sink.on_event, event, payload)
        if state is not None:
            for sink in self.sinks:
                self.guarded(sink, "on_state", sink.on_state, source, state)

    def health(self, source: str, payload: dict[str, Any]) -> None:
        for sink in self.sinks:
            self.guarded(sink, "on_health", sink.on_health, source, payload)

    def sources(self, machines: Mapping[str, str], skip: Collection[Sink] = ()) -> None:
        """The configured sources changed; ``skip`` sinks were just built with them."""
        for sink in self.sinks:
            if not any(sink is other for other in skip):
                self.guarded(sink, "on_sources", sink.on_sources, machines)

    def stop(self, timeout: float) -> None:
        """Stop every sink (each gets ``timeout``), in order."""
        for sink in self.sinks:
            self.guarded(sink, "stop", sink.stop, timeout)

    # ------------------------------------------------------------------ commands in
    def receive(self, command: Command) -> None:
        """A sink received a command: hand it to the daemon."""
        if self._on_command is not None:
            self._on_command(command)

    @staticmethod
    def guarded(sink: Sink, what: str, method: Callable[..., None], *args: Any) -> None:
        """Call one sink's ``method``; an exception is logged, never raised."""
        try:
            method(*args)
        except Exception:  # noqa: BLE001 - one broken output must not silence the others
            log.exception("%s.%s failed", type(sink).__name__, what)
