"""sd_notify over a real Unix datagram socket, as systemd provides it."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.outputs.sdnotify import Notifier, Watchdog


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_reach_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready(status="listening to 2 sources")
    assert recv(sock) == "READY=1\nSTATUS=listening to 2 sources"
    assert n.status("multi\nline   status")
    assert recv(sock) == "STATUS=multi line status"
    assert n.watchdog()
    assert recv(sock) == "WATCHDOG=1"
    assert n.reloading()
    msg = recv(sock)
    assert msg.startswith("RELOADING=1\nMONOTONIC_USEC=") and msg.split("=")[-1].isdigit()
    assert n.stopping()
    assert recv(sock) == "STOPPING=1"
    assert n.sent == 5


def test_abstract_namespace_socket() -> None:
    name = f"sonitor-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert recv(sock) == "READY=1"
    finally:
        sock.close()


def test_without_systemd_everything_is_a_noop() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_seconds is None
    assert not n.ready() and not n.watchdog() and not n.stopping()


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled and not n.ready()


def test_watchdog_interval_from_env() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "20000000"}
    assert Notifier(env).watchdog_seconds == 20.0
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_seconds == 20.0
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_seconds is None
    assert Notifier({**env, "WATCHDOG_USEC": "abc"}).watchdog_seconds is None


def test_watchdog_pings_only_while_progressing(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    now = [0.0]
    progressing = [True]
    wd = Watchdog(notifier, lambda: progressing[0], clock=lambda: now[0])
    assert wd.interval_s == 1.0  # half of WatchdogSec
    assert wd.tick()
    assert recv(sock) == "WATCHDOG=1"
    now[0] = 0.5
    assert not wd.tick()  # too early
    now[0] = 1.1
    progressing[0] = False  # e.g. capture stalled or inference stuck
    assert not wd.tick()
    assert wd.withheld == 1
    now[0] = 2.2
    progressing[0] = True
    assert wd.tick()
    assert recv(sock) == "WATCHDOG=1"
    assert wd.pings == 2
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(100)  # nothing else was sent


def test_watchdog_disabled_without_watchdog_usec() -> None:
    wd = Watchdog(Notifier({"NOTIFY_SOCKET": "/x"}), lambda: True)
    assert wd.interval_s is None and not wd.tick()
