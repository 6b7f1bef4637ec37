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
