"""`sonitor devices`: list audio input devices and the identity to put in the config.

The plant engineer runs this once when wiring microphones: it shows what PortAudio sees now, with
the stable identity (USB vendor:product:serial or ALSA card id) that survives re-plugging, and
says plainly when nothing is there, which is the most common first problem on a headless PC.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from monitor.audio import devices as devs

NO_DEVICES_HINT = """\
No audio input device found.
PortAudio sees no ALSA capture card and no PulseAudio/PipeWire server. Check that:
  - the microphone / audio interface is plugged in and listed by `arecord -l`
    (on the host; a container needs /dev/snd passed through);
  - the service user may open it: member of the `audio` group, and no
    PrivateDevices=yes in the systemd unit (use DeviceAllow=char-alsa rw);
  - when using PulseAudio/PipeWire, its server runs for this user (`pactl info`)
    and the ALSA `pulse` plugin is installed (libasound2-plugins);
  - no other program holds an ALSA hw device exclusively ("Device or resource busy").
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "devices",
        help="list audio input devices and their stable identities",
        description="List the audio input devices PortAudio sees, with the value to use as "
        "`device:` in a source: a name substring, the index (changes on re-plug) or, best, "
        "the identity (usb:VID:PID[:SERIAL] or alsa:CARDID).",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--proc-asound", type=Path, default=devs.PROC_ASOUND, help=argparse.SUPPRESS)
    p.add_argument("--sys-sound", type=Path, default=devs.SYS_SOUND, help=argparse.SUPPRESS)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the devices; exit 0 when there is at least one input device, 1 when none."""
    out = sys.stdout if out is None else out
    found = devs.list_input_devices(args.proc_asound, args.sys_sound)
    if args.json:
        json.dump({"input_devices": [d.to_dict() for d in found]}, out, indent=2)
        out.write("\n")
    elif not found:
        out.write(NO_DEVICES_HINT)
    else:
        out.write(format_table(found))
    return 0 if found else 1


def format_table(found: list[devs.InputDevice]) -> str:
    """A fixed-width table; `*` marks the default input device."""
    rows = [("", "index", "name", "host API", "channels", "rate Hz", "identity")]
    for d in found:
        rows.append(
            (
                "*" if d.is_default else "",
                str(d.index),
                d.name,
                d.hostapi,
                str(d.channels),
                f"{d.default_samplerate:.0f}",
                d.identity or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    lines.append(
        "Use one as `device:` in a source: a name substring, the index (may change when devices "
        "are re-plugged) or the identity (stable). * = default input."
    )
    return "\n".join(lines) + "\n"
