"""The one `sonitor` command.

Runtime subcommands are registered here. Training and export contribute theirs through the
`sonitor.commands` entry-point group, so this module never imports torch or `training`; when the
`[train]` extra is not installed those subcommands are simply absent (and `--help` says so).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from monitor import __version__
from monitor.errors import SonitorError

# A subcommand handler takes the parsed arguments and returns the process exit code.
Handler = Callable[[argparse.Namespace], int]

# Runtime modules that add subcommands: each has `register(subparsers)`.
_RUNTIME_COMMAND_NAMES = frozenset(
    {"run", "check-config", "test-alert", "devices", "enroll", "score"}
)
_RUNTIME_COMMAND_MODULES: tuple[str, ...] = (
    "monitor.cli.daemon",
    "monitor.cli.devices",
    "monitor.cli.package",
)


def _load_plugins(subparsers: argparse._SubParsersAction) -> list[str]:
    """Let installed optional packages add subcommands; return the names that failed to load."""
    missing: list[str] = []
    for ep in entry_points(group="sonitor.commands"):
        try:
            register = ep.load()
        except ImportError as exc:  # e.g. torch not installed: the runtime still works
            missing.append(f"{ep.name} ({exc})")
            continue
        register(subparsers)
    return missing


def build_parser(plugins: bool = True) -> tuple[argparse.ArgumentParser, list[str]]:
    """The full parser; `plugins=False` leaves out training/export (fast, lean daemon start)."""
    parser = argparse.ArgumentParser(
        prog="sonitor",
        description="Listen to machines; tell people when one starts to sound wrong.",
    )
    parser.add_argument("--version", action="version", version=f"sonitor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name in _RUNTIME_COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    missing = _load_plugins(subparsers) if plugins else []
    if missing:
        parser.epilog = (
            "Some subcommands are unavailable: "
            + "; ".join(missing)
            + ". Install the training extra: pip install 'sonitor[train]'."
        )
    return parser, missing


def _runtime_command(argv: list[str]) -> bool:
    """True when argv names a runtime subcommand: the daemon then skips importing the training
    and export plugins (seconds of start-up and ~100 MB of memory it never uses)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first in _RUNTIME_COMMAND_NAMES


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, _ = build_parser(plugins=not _runtime_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except SonitorError as exc:
        print(f"sonitor {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
