"""Audio input devices: listing, stable identities and resolution of a configured device.

Why identities: PortAudio indices and ALSA card numbers change when USB devices are re-enumerated
(reboot, re-plug, a second microphone). The USB vendor:product:serial (or the USB bus path when the
device has no serial) and the ALSA card id stay the same, so a configured ``usb:0d8c:0014:ABC``
finds the right microphone again. They are read from ``/proc/asound`` and ``/sys/class/sound``;
both roots are parameters so the parsing can be tested on fabricated trees.

PortAudio only enumerates devices when it is initialised, so hot-plugged devices are invisible
until :func:`refresh_portaudio` re-initialises it (the sounddevice maintainers' recipe:
``sd._terminate(); sd._initialize()``). Re-initialising closes every open stream, so callers do it
only when none is open. All PortAudio calls of this package hold :data:`PA_LOCK`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from monitor.errors import SonitorError

PROC_ASOUND = Path("/proc/asound")
SYS_SOUND = Path("/sys/class/sound")

# Serialises PortAudio calls (open, close, query, re-initialise) across threads.
PA_LOCK = threading.RLock()

_CARD_LINE = re.compile(r"^\s*(\d+)\s+\[([^\]]*)\]:\s*(.*?)\s*$")
_HW_IN_NAME = re.compile(r"\(hw:(\d+),(\d+)\)")
_USB_ID = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$")
_IDENTITY_SPEC = re.compile(r"^(alsa:\S+|usb:[0-9a-fA-F]{4}:[0-9a-fA-F]{4}(:[^@\s]+)?(@\S+)?)$")


class DeviceNotFoundError(SonitorError):
    """No input device matches the configured one (or several do)."""


@dataclass(frozen=True)
class CardIdentity:
    """What the kernel says about one ALSA card."""

    card: int
    card_id: str
    name: str
    usb_id: str | None = None
    serial: str | None = None
    bus_path: str | None = None

    @property
    def identity(self) -> str:
        """The most stable identity available: USB serial, else USB bus path, else ALSA id."""
        if self.usb_id:
            if self.serial:
                return f"usb:{self.usb_id}:{self.serial}"
            if self.bus_path:
                return f"usb:{self.usb_id}@{self.bus_path}"
            return f"usb:{self.usb_id}"
        return f"alsa:{self.card_id}"

    def matches(self, spec: str) -> bool:
        """Does an identity spec (``usb:VID:PID[:SERIAL|@BUSPATH]``, ``alsa:ID``) name this card?"""
        kind, _, rest = spec.partition(":")
        if kind == "alsa":
            return rest == self.card_id
        if kind != "usb" or not self.usb_id:
            return False
        rest, at, path = rest.partition("@")
        parts = rest.split(":")
        if ":".join(parts[:2]).lower() != self.usb_id.lower():
            return False
        if len(parts) > 2 and ":".join(parts[2:]) != (self.serial or ""):
            return False
        return not at or path == self.bus_path


@dataclass(frozen=True)
class InputDevice:
    """One PortAudio input device, with its card's identity when it is an ALSA ``hw`` device."""

    index: int
    name: str
    hostapi: str
    channels: int
    default_samplerate: float
    is_default: bool = False
    card: int | None = None
    identity: str | None = None

    @property
    def label(self) -> str:
        return f"#{self.index} '{self.name}' ({self.hostapi})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def read_cards(
    proc_asound: Path = PROC_ASOUND, sys_sound: Path = SYS_SOUND
) -> dict[int, CardIdentity]:
    """Parse ``/proc/asound/cards`` (+ per-card ``id``/``usbid`` and sysfs USB attributes)."""
    text = _read_text(proc_asound / "cards")
    if not text:
        return {}
    cards: dict[int, CardIdentity] = {}
    for line in text.splitlines():
        m = _CARD_LINE.match(line)
        if not m:
            continue  # the indented second line of each card
        num, bracket_id, desc = int(m.group(1)), m.group(2).strip(), m.group(3)
        card_dir = proc_asound / f"card{num}"
        card_id = _read_text(card_dir / "id") or bracket_id
        name = desc.split(" - ", 1)[1] if " - " in desc else desc
        usb_id = _read_text(card_dir / "usbid")
        if usb_id is not None and not _USB_ID.match(usb_id):
            usb_id = None
        serial = bus_path = None
        usb_dev = _usb_device_dir(sys_sound / f"card{num}" / "device")
        if usb_dev is not None:
            vendor, product = _read_text(usb_dev / "idVendor"), _read_text(usb_dev / "idProduct")
            if usb_id is None and vendor and product:
                usb_id = f"{vendor}:{product}"
            serial = _read_text(usb_dev / "serial") or None
            bus_path = usb_dev.name
        cards[num] = CardIdentity(num, card_id, name, usb_id and usb_id.lower(), serial, bus_path)
    return cards


def _usb_device_dir(device_link: Path) -> Path | None:
    """The USB device directory above a card's sysfs ``device`` (a USB interface ``1-2:1.0``)."""
    try:
        resolved = device_link.resolve(strict=True)
    except OSError:
        return None
    for candidate in (resolved, *resolved.parents):
        if (candidate / "idVendor").is_file():
            return candidate
        if candidate == candidate.parent or candidate.name in ("devices", "sys"):
            break
    return None


def card_signature(proc_asound: Path = PROC_ASOUND) -> str | None:
    """The card list's text; a change means a card was plugged or removed (None: no ALSA info)."""
    return _read_text(proc_asound / "cards")


def hw_card_of(name: str) -> int | None:
    """The ALSA card number of a PortAudio device named like ``USB Audio: - (hw:1,0)``."""
    m = _HW_IN_NAME.search(name)
    return int(m.group(1)) if m else None


def portaudio() -> ModuleType:
    """Import sounddevice, turning a missing PortAudio library into a clear error."""
    try:
        import sounddevice
    except OSError as exc:  # the Linux wheel does not bundle PortAudio
        raise SonitorError(
            f"cannot load PortAudio ({exc}); install it: apt-get install libportaudio2"
        ) from exc
    return sounddevice


def list_input_devices(
    proc_asound: Path = PROC_ASOUND,
    sys_sound: Path = SYS_SOUND,
    query: Any = None,
) -> list[InputDevice]:
    """Input devices as PortAudio sees them now (``query`` returns ``(devices, hostapis)``)."""
    if query is None:
        sd = portaudio()
        with PA_LOCK:
            raw, hostapis = list(sd.query_devices()), list(sd.query_hostapis())
            try:
                default_in = int(sd.default.device[0])
            except (TypeError, ValueError, IndexError):
                default_in = -1
    else:
        raw, hostapis, default_in = query()
    cards = read_cards(proc_asound, sys_sound)
    out: list[InputDevice] = []
    for i, d in enumerate(raw):
        if int(d.get("max_input_channels", 0)) <= 0:
            continue
        index = int(d.get("index", i))
        hostapi_idx = int(d.get("hostapi", 0))
        hostapi = hostapis[hostapi_idx]["name"] if 0 <= hostapi_idx < len(hostapis) else "?"
        card = hw_card_of(str(d["name"]))
        ident = cards[card].identity if card is not None and card in cards else None
        is_default = index == default_in or (
            default_in < 0 and 0 <= hostapi_idx < len(hostapis)
            and hostapis[hostapi_idx].get("default_input_device") == index
        )  # fmt: skip
        out.append(
            InputDevice(
                index=index,
                name=str(d["name"]),
                hostapi=hostapi,
                channels=int(d["max_input_channels"]),
                default_samplerate=float(d.get("default_samplerate", 0.0)),
                is_default=is_default,
                card=card,
                identity=ident,
            )
        )
    return out


def resolve_device(
    spec: str | int | None,
    devices: list[InputDevice],
    cards: dict[int, CardIdentity] | None = None,
) -> InputDevice:
    """Find the configured input device: None (default), index, identity or name substring.

    Identity specs: ``usb:VID:PID`` (any serial), ``usb:VID:PID:SERIAL``, ``usb:VID:PID@BUSPATH``,
    ``alsa:CARDID``. A name matches exactly first, else as a case-insensitive substring. No match
    or several matches raise :class:`DeviceNotFoundError` naming the spec and the candidates.
    """
    if not devices:
        raise DeviceNotFoundError(
            f"no audio input device found while looking for {spec!r}: PortAudio lists none "
            "(no ALSA capture card and no PulseAudio/PipeWire server)"
        )
    if spec is None:
        for d in devices:
            if d.is_default:
                return d
        return devices[0]
    if isinstance(spec, bool):
        raise DeviceNotFoundError(f"device {spec!r} is neither an index nor a name")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        index = int(spec)
        for d in devices:
            if d.index == index:
                return d
        raise DeviceNotFoundError(
            f"no input device with index {index}; input devices: {_names(devices)}"
        )
    text = str(spec).strip()
    if text.startswith(("usb:", "alsa:")):
        return _resolve_identity(text, devices, cards)
    exact = [d for d in devices if d.name == text]
    if len(exact) == 1:
        return exact[0]
    found = [d for d in devices if text.lower() in d.name.lower()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DeviceNotFoundError(
            f"no input device name contains {text!r}; input devices: {_names(devices)}"
        )
    raise DeviceNotFoundError(
        f"device {text!r} is ambiguous, it matches {_names(found)}; "
        "use a longer name, the index or the identity shown by `sonitor devices`"
    )


def _resolve_identity(
    text: str, devices: list[InputDevice], cards: dict[int, CardIdentity] | None
) -> InputDevice:
    if not _IDENTITY_SPEC.match(text):
        raise DeviceNotFoundError(
            f"device identity {text!r} is malformed; expected usb:VID:PID[:SERIAL|@BUSPATH] "
            "(4 hex digits each) or alsa:CARDID"
        )
    cards = read_cards() if cards is None else cards
    matching = sorted(c for c, ident in cards.items() if ident.matches(text))
    if len(matching) > 1:
        ids = ", ".join(cards[c].identity for c in matching)
        raise DeviceNotFoundError(
            f"device identity {text!r} is ambiguous, it matches cards {ids}; add the serial "
            "(usb:VID:PID:SERIAL) or the bus path (usb:VID:PID@BUSPATH)"
        )
    if not matching:
        known = ", ".join(c.identity for c in cards.values()) or "none"
        raise DeviceNotFoundError(f"no sound card has identity {text!r}; cards: {known}")
    on_card = [d for d in devices if d.card == matching[0]]
    if not on_card:
        raise DeviceNotFoundError(
            f"sound card {cards[matching[0]].identity} (card {matching[0]}) has no input device "
            f"that PortAudio can open; input devices: {_names(devices)}"
        )
    return on_card[0]


def _names(devices: list[InputDevice]) -> str:
    return ", ".join(d.label for d in devices) or "none"


def refresh_portaudio() -> None:
    """Re-initialise PortAudio so that it enumerates devices again (closes every open stream)."""
    sd = portaudio()
    with PA_LOCK:
        if sd._initialized > 0:
            sd._terminate()
        sd._initialize()
