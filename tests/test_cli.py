"""The `sonitor` command: runtime subcommands load without training/export; plugins add theirs."""

from __future__ import annotations

import argparse
import subprocess
import sys

from monitor.cli import sonitor as cli


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def test_runtime_command_names_match_the_runtime_modules():
    parser, _ = cli.build_parser(plugins=False)
    assert _subcommands(parser) == set(cli._RUNTIME_COMMAND_NAMES)


def test_plugins_add_training_and_export_commands():
    parser, missing = cli.build_parser()
    assert not missing
    assert {"evaluate", "synth", "demo", "export"} <= _subcommands(parser)


def test_runtime_commands_do_not_import_torch_or_training():
    code = (
        "import sys; from monitor.cli import sonitor as cli\n"
        "try:\n    cli.main(['check-config', '--help'])\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'export')]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_every_subcommand_has_help():
    parser, _ = cli.build_parser()
    for name in _subcommands(parser):
        r = subprocess.run(
            [sys.executable, "-m", "monitor.cli.sonitor", name, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, (name, r.stderr)
        assert "usage: sonitor" in r.stdout and len(r.stdout) > 200, name


# A runtime-only install (`pip install .`, what deploy/install.sh puts on the PC) stood in for by
# blocking the imports of the `train` extra: find_spec and import both fail, as if not installed.
_WITHOUT_TRAIN = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "sklearn"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocker())
from monitor.cli.sonitor import main
sys.exit(main(sys.argv[1:]))
"""


def _without_train(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRAIN, *argv], capture_output=True, text=True, timeout=60
    )


def test_runtime_only_install_hides_training_commands_and_names_the_extra():
    r = _without_train("--help")
    assert r.returncode == 0, r.stderr
    listed = r.stdout.split("options:")[0]
    assert "run " in listed and "enroll" in listed
    for name in ("demo", "export", "evaluate"):
        assert f"    {name} " not in listed, r.stdout
    assert "pip install 'sonitor[train]'" in " ".join(r.stdout.split())
    for argv in (["demo", "--quick"], ["export", "--data", "d", "--out", "p"], ["evaluate"]):
        r = _without_train(*argv)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"sonitor {argv[0]}: error: needs the train extra" in r.stderr
        assert "pip install 'sonitor[train]'" in r.stderr and "torch" in r.stderr


def test_plugin_requirements_are_the_train_extra():
    """REQUIRES (import names) must name every distribution of the `train` extra, and only them."""
    import importlib.metadata
    import re
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib")
    from training import cli as training_cli

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"][training_cli.EXTRA]
    dists = {re.match(r"[A-Za-z0-9._-]+", r)[0].lower() for r in extra}
    owner = importlib.metadata.packages_distributions()
    provided = {d.lower() for name in training_cli.REQUIRES for d in owner.get(name, [])}
    assert provided == dists


_LOG_LINES = """
import logging
from monitor.cli.sonitor import main
main(["check-config", "/nonexistent/sonitor.yaml"])  # sets up logging as every command does
log = logging.getLogger("sonitor.test")
log.info("started")
log.warning("disk almost full")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("scoring failed")
"""


def _log_lines(tmp_path, journal: str | None) -> list[str]:
    """stderr of the snippet above, written to a file; JOURNAL_STREAM names that file when
    ``journal == "same"`` (as systemd does for its journal stream), another one for "other"."""
    import os

    err = tmp_path / "stderr"
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal == "same":
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal == "other":  # inherited from a parent whose stderr was the journal
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + 1}"
        subprocess.run([sys.executable, "-c", _LOG_LINES], stderr=f, env=env, timeout=60)
    return [line for line in err.read_text().splitlines() if "sonitor.test" in line or "<" in line]


def test_log_lines_carry_journal_priorities_when_stderr_is_the_journal(tmp_path):
    lines = _log_lines(tmp_path, "same")
    assert "<6>INFO sonitor.test: started" in lines
    assert "<4>WARNING sonitor.test: disk almost full" in lines
    assert "<3>ERROR sonitor.test: scoring failed" in lines
    assert "<3>Traceback (most recent call last):" in lines  # every line of it: `journalctl -p err`
    assert "<3>ZeroDivisionError: division by zero" in lines
    for journal in (None, "other"):  # a terminal, or a file: plain lines with a time stamp
        plain = _log_lines(tmp_path, journal)
        assert not [line for line in plain if line.startswith("<")], plain
        assert any(line.endswith("WARNING sonitor.test: disk almost full") for line in plain)


def test_enrolling_from_a_source_refuses_nan_audio(tmp_path, capsys):
    """NaN/inf from a source are never enrolled (as `--audio` refuses such a file)."""
    import numpy as np
    import yaml
    from daemon_process import machine_audio, write_wav
    from package_fixtures import make_tiny_package

    from monitor.model.package import ModelPackage

    pkg = make_tiny_package(tmp_path / "pkg", machines=("fan",))
    x = machine_audio("fan", 4, seed=1).astype(np.float32)
    x[16000:16100] = np.nan
    wav = write_wav(tmp_path / "nan.wav", x, subtype="FLOAT")
    src = {"type": "file", "name": "mic", "machine": "fan", "path": str(wav), "realtime": False}
    cfg = tmp_path / "sonitor.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"package": str(pkg)}, "sources": [src]}))
    before = ModelPackage.load(pkg).model_version
    argv = ["enroll", "--package", str(pkg), "--source", "mic", "--seconds", "3"]
    assert cli.main([*argv, "--config", str(cfg)]) == 2
    assert "source 'mic': recorded 100 NaN or infinite sample(s)" in capsys.readouterr().err
    assert ModelPackage.load(pkg).model_version == before  # the package is untouched
