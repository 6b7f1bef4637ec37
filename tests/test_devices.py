"""Device listing and resolution on fabricated /proc/asound + /sys trees (no /dev/snd needed)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from monitor.audio import devices as devs
from monitor.cli import devices as cli_devices

CARDS = """\
 0 [PCH            ]: HDA-Intel - HDA Intel PCH
                      HDA Intel PCH at 0xf7f10000 irq 32
 1 [Device         ]: USB-Audio - USB PnP Sound Device
                      C-Media Electronics Inc. USB PnP Sound Device at usb-0000:00:14.0-2, full
 2 [Device_1       ]: USB-Audio - USB PnP Sound Device
                      C-Media Electronics Inc. USB PnP Sound Device at usb-0000:00:14.0-3, full
 3 [UMC404HD       ]: USB-Audio - UMC404HD 192k
                      BEHRINGER UMC404HD 192k at usb-0000:00:14.0-4.1, high speed
"""


def _usb_card(proc: Path, sys_root: Path, num: int, usbid: str, bus: str, serial: str | None):
    """card<num> in /proc/asound and its sysfs device: .../usb1/<bus>/<bus>:1.0 -> parent attrs."""
    (proc / f"card{num}" / "usbid").write_text(usbid + "\n")
    dev = sys_root / "devices" / "pci0000:00" / "usb1" / bus
    iface = dev / f"{bus}:1.0"
    iface.mkdir(parents=True)
    vendor, product = usbid.split(":")
    (dev / "idVendor").write_text(vendor + "\n")
    (dev / "idProduct").write_text(product + "\n")
    if serial is not None:
        (dev / "serial").write_text(serial + "\n")
    link_dir = sys_root / "class" / "sound" / f"card{num}"
    link_dir.mkdir(parents=True)
    (link_dir / "device").symlink_to(iface)


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    proc, sys_root = tmp_path / "proc" / "asound", tmp_path / "sys"
    proc.mkdir(parents=True)
    (proc / "cards").write_text(CARDS)
    for num, cid in enumerate(["PCH", "Device", "Device_1", "UMC404HD"]):
        (proc / f"card{num}").mkdir()
        (proc / f"card{num}" / "id").write_text(cid + "\n")
    _usb_card(proc, sys_root, 1, "0d8c:0014", "1-2", "ABC123")
    _usb_card(proc, sys_root, 2, "0d8c:0014", "1-3", None)  # same model, no serial
    _usb_card(proc, sys_root, 3, "1397:0509", "1-4.1", "")  # empty serial file
    (sys_root / "class" / "sound" / "card0").mkdir(parents=True)  # PCI card: no usb parent
    return proc, sys_root / "class" / "sound"


def fake_portaudio() -> tuple[list[dict], list[dict], int]:
    """What sd.query_devices()/query_hostapis() return on such a machine (inputs and outputs)."""
    names = [
        ("HDA Intel PCH: ALC892 Analog (hw:0,0)", 2, 44100.0),
        ("HDA Intel PCH: HDMI 0 (hw:0,3)", 0, 44100.0),  # output only
        ("USB PnP Sound Device: Audio (hw:1,0)", 1, 48000.0),
        ("USB PnP Sound Device: Audio (hw:2,0)", 1, 48000.0),
        ("UMC404HD 192k: USB Audio (hw:3,0)", 4, 48000.0),
        ("pulse", 32, 44100.0),
        ("default", 32, 44100.0),
    ]
    devices = [
        {"index": i, "name": n, "hostapi": 0, "max_input_channels": ch,
         "default_samplerate": rate}
        for i, (n, ch, rate) in enumerate(names)
    ]  # fmt: skip
    return devices, [{"name": "ALSA", "default_input_device": 6}], 6


def listed(tree: tuple[Path, Path]) -> list[devs.InputDevice]:
    return devs.list_input_devices(*tree, query=fake_portaudio)


def test_read_cards_identities(tree: tuple[Path, Path]) -> None:
    cards = devs.read_cards(*tree)
    assert sorted(cards) == [0, 1, 2, 3]
    assert cards[0].identity == "alsa:PCH" and cards[0].usb_id is None
    assert cards[1].identity == "usb:0d8c:0014:ABC123"
    assert cards[1].bus_path == "1-2" and cards[1].name == "USB PnP Sound Device"
    assert cards[2].identity == "usb:0d8c:0014@1-3"  # no serial: the USB port path
    assert cards[3].identity == "usb:1397:0509@1-4.1"  # an empty serial is no serial


def test_read_cards_without_proc_is_empty(tmp_path: Path) -> None:
    assert devs.read_cards(tmp_path / "nope", tmp_path / "nope") == {}
    assert devs.card_signature(tmp_path / "nope") is None


def test_usbid_from_sysfs_when_proc_lacks_it(tree: tuple[Path, Path]) -> None:
    proc, sys_sound = tree
    (proc / "card3" / "usbid").unlink()
    assert devs.read_cards(proc, sys_sound)[3].usb_id == "1397:0509"


def test_list_input_devices(tree: tuple[Path, Path]) -> None:
    found = listed(tree)
    names = [d.name for d in found]
    assert "HDA Intel PCH: HDMI 0 (hw:0,3)" not in names  # outputs are not listed
    assert len(found) == 6
    umc = found[3]
    assert (umc.index, umc.channels, umc.card, umc.identity) == (4, 4, 3, "usb:1397:0509@1-4.1")
    assert found[4].identity is None and found[4].card is None  # "pulse": not a hw device
    assert [d.is_default for d in found] == [False] * 5 + [True]


def test_resolve_by_default_index_and_name(tree: tuple[Path, Path]) -> None:
    found = listed(tree)
    cards = devs.read_cards(*tree)
    assert devs.resolve_device(None, found, cards).name == "default"
    assert devs.resolve_device(4, found, cards).name.startswith("UMC404HD")
    assert devs.resolve_device("4", found, cards).index == 4
    assert devs.resolve_device("umc404", found, cards).index == 4  # case-insensitive substring
    assert devs.resolve_device("pulse", found, cards).index == 5
    assert devs.resolve_device("default", found, cards).index == 6  # exact name wins


def test_resolve_by_identity(tree: tuple[Path, Path]) -> None:
    found = listed(tree)
    cards = devs.read_cards(*tree)
    assert devs.resolve_device("usb:0d8c:0014:ABC123", found, cards).card == 1
    assert devs.resolve_device("usb:0D8C:0014@1-3", found, cards).card == 2
    assert devs.resolve_device("usb:1397:0509", found, cards).index == 4
    assert devs.resolve_device("alsa:Device_1", found, cards).card == 2
    assert devs.resolve_device("alsa:PCH", found, cards).index == 0


def test_identity_survives_reenumeration(tree: tuple[Path, Path]) -> None:
    """The same microphone on another card number and PortAudio index is still found."""
    proc, sys_sound = tree
    cards_text = CARDS.replace(" 1 [Device ", " 7 [Device ")
    (proc / "cards").write_text(cards_text)
    (proc / "card1").rename(proc / "card7")
    (sys_sound / "card1").rename(sys_sound / "card7")

    def query() -> tuple[list[dict], list[dict], int]:
        devices, apis, default = fake_portaudio()
        devices[2]["name"] = "USB PnP Sound Device: Audio (hw:7,0)"
        devices.insert(0, devices.pop(2))  # now PortAudio index 0
        for i, d in enumerate(devices):
            d["index"] = i
        return devices, apis, default

    found = devs.list_input_devices(proc, sys_sound, query=query)
    dev = devs.resolve_device("usb:0d8c:0014:ABC123", found, devs.read_cards(proc, sys_sound))
    assert (dev.index, dev.card, dev.name) == (0, 7, "USB PnP Sound Device: Audio (hw:7,0)")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("usb:0d8c:0014", "ambiguous.*serial"),  # two cards of the same model
        ("USB PnP", "ambiguous"),
        ("usb:dead:beef", "no sound card has identity 'usb:dead:beef'"),
        ("usb:0d8c", "malformed"),
        ("alsa:Nope", "no sound card has identity"),
        ("scarlett", "no input device name contains 'scarlett'.*#5 'pulse'"),
        (42, "no input device with index 42"),
    ],
)
def test_resolve_errors_name_the_value(tree: tuple[Path, Path], spec: object, message: str):
    with pytest.raises(devs.DeviceNotFoundError, match=message):
        devs.resolve_device(spec, listed(tree), devs.read_cards(*tree))  # type: ignore[arg-type]


def test_resolve_with_no_devices_explains() -> None:
    with pytest.raises(devs.DeviceNotFoundError, match="PulseAudio"):
        devs.resolve_device("pulse", [])


def test_card_on_list_but_no_portaudio_device(tree: tuple[Path, Path]) -> None:
    found = [d for d in listed(tree) if d.card != 3]
    with pytest.raises(devs.DeviceNotFoundError, match=r"card 3\) has no input device"):
        devs.resolve_device("usb:1397:0509", found, devs.read_cards(*tree))


def test_hw_card_parsing() -> None:
    assert devs.hw_card_of("USB Audio Device: - (hw:12,0)") == 12
    assert devs.hw_card_of("pulse") is None


# ------------------------------------------------------------------ `sonitor devices`
def _args(tree: tuple[Path, Path], *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_devices.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(
        ["devices", "--proc-asound", str(tree[0]), "--sys-sound", str(tree[1]), *argv]
    )


def test_cli_table_and_json(tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    real = devs.list_input_devices
    monkeypatch.setattr(devs, "list_input_devices", lambda p, s: real(p, s, query=fake_portaudio))
    out = io.StringIO()
    args = _args(tree)
    assert args.handler(args, out) == 0
    text = out.getvalue()
    assert "usb:0d8c:0014:ABC123" in text and "UMC404HD" in text
    marked = [line for line in text.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and " default " in marked[0]  # the default input is marked
    out = io.StringIO()
    args = _args(tree, "--json")
    assert args.handler(args, out) == 0
    data = json.loads(out.getvalue())["input_devices"]
    assert data[3]["identity"] == "usb:1397:0509@1-4.1" and data[3]["channels"] == 4


def test_cli_says_when_there_are_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devs, "list_input_devices", lambda p, s: [])
    out = io.StringIO()
    args = _args((tmp_path, tmp_path))
    assert args.handler(args, out) == 1
    assert "No audio input device found" in out.getvalue()
    assert "pactl info" in out.getvalue() and "arecord -l" in out.getvalue()
