"""Progress lines of the long offline loops (enrolment, embedding for evaluation): drawn on a
terminal (a real pseudo-terminal here), never in a pipe, a log file or the journal."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from daemon_process import REPO, machine_audio, write_wav
from package_fixtures import make_tiny_package

EMBED = """
import numpy as np, torch
from training.recipes.inference import embed_waves
x = embed_waves(torch.nn.Flatten(), np.zeros((6, 8), np.float32), batch_size=2, progress=True)
assert x.shape == (6, 8)
"""


def _stderr_of(argv: list[str], terminal: bool) -> str:
    """Run ``argv`` with stderr on a pseudo-terminal (or a pipe); what it wrote there."""
    env = dict(os.environ)
    if not terminal:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
        assert res.returncode == 0, res.stderr
        return res.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave, cwd=REPO, env=env)
    os.close(slave)
    out = _drain(master)
    assert proc.wait(timeout=120) == 0, out
    return out.decode(errors="replace")


def _drain(master: int) -> bytes:
    """Everything written to the terminal until its last writer closed it; closes ``master``."""
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: no writer is left
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def enrol_argv(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    tmp = tmp_path_factory.mktemp("enrol")
    pkg = make_tiny_package(tmp / "pkg", machines=("fan",))
    wavs = [write_wav(tmp / f"{i}.wav", machine_audio("fan", 3, seed=i)) for i in range(3)]
    return [sys.executable, "-m", "monitor.cli.sonitor", "enroll", "--package", str(pkg),
            "--machine", "fan", "--audio", *map(str, wavs)]  # fmt: skip


def test_enrolment_counts_files_on_a_terminal(enrol_argv: list[str]) -> None:
    err = _stderr_of(enrol_argv, terminal=True)
    for i in (1, 2, 3):
        assert f"\renrol: embedding file {i}/3" in err, err


def test_enrolment_draws_nothing_into_a_pipe(enrol_argv: list[str]) -> None:
    assert "embedding file" not in _stderr_of(enrol_argv, terminal=False)


def test_embedding_bar_on_a_terminal_only() -> None:
    argv = [sys.executable, "-c", EMBED]
    err = _stderr_of(argv, terminal=True)
    assert "embedding:" in err and "/3 [" in err, err  # tqdm: batches done of 3
    assert "embedding" not in _stderr_of(argv, terminal=False)


def test_progress_leaves_a_clean_line(tmp_path: Path) -> None:
    from monitor.progress import progress

    master, slave = pty.openpty()
    with open(slave, "w") as tty:
        assert list(progress([1, 2], "step", stream=tty)) == [1, 2]
    out = _drain(master).decode()
    assert out == "\rstep 1/2\rstep 2/2\r        \r"
