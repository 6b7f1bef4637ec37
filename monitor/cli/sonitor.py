"""The one `sonitor` command.

Runtime subcommands are registered here. Training and export contribute theirs through the
`sonitor.commands` entry-point group, so this module never imports torch or `training`. A plugin
module names the extra it needs (`EXTRA`) and that extra's import names (`REQUIRES`); when one of
them is not installed (a runtime-only `pip install .`), its subcommands are left out of `--help`
and running one prints a one-line hint naming the extra and exits 2, instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from monitor import __version__
from monitor.cli.logs import configure_logging
from monitor.errors import SonitorError

# A subcommand handler takes the parsed arguments and returns the process exit code.
Handler = Callable[[argparse.Namespace], int]

# Runtime modules that add subcommands: each has `register(subparsers)`.
_RUNTIME_COMMAND_NAMES = frozenset(
    {"run", "check-config", "test-alert", "devices", "enroll", "score", "ack", "history", "revert"}
)
_RUNTIME_COMMAND_MODULES: tuple[str, ...] = (
    "monitor.cli.daemon",
    "monitor.cli.devices",
    "monitor.cli.package",
    "monitor.cli.ack",
)


def _not_installed(names: tuple[str, ...]) -> list[str]:
    """The import names that cannot be found (nothing is imported: torch takes seconds)."""
    absent = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken install, or blocked
            found = False
        if not found:
            absent.append(name)
    return absent


def _hint_commands(
    register: Callable[[argparse._SubParsersAction], None],
    subparsers: argparse._SubParsersAction,
    message: str,
) -> list[str]:
    """Add the plugin's subcommands as hidden stand-ins that accept any arguments and fail with
    ``message`` (a SonitorError: one line, exit 2); returns their names."""
    scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
    try:
        register(scratch)
    except Exception:  # noqa: BLE001 - a plugin that cannot even register: leave it out
        return []

    def unavailable(args: argparse.Namespace) -> int:
        raise SonitorError(message)

    for name in scratch.choices:
        if name not in subparsers.choices:  # no help=: not listed in --help
            p = subparsers.add_parser(name, add_help=False, prefix_chars="\0")
            p.add_argument("ignored", nargs=argparse.REMAINDER)
            p.set_defaults(handler=unavailable)
    return list(scratch.choices)


def _load_plugins(subparsers: argparse._SubParsersAction) -> list[str]:
    """Let installed optional packages add subcommands; return what is unavailable and why."""
    missing: list[str] = []
    need: dict[str, list[str]] = {}  # install hint -> commands that need it
    for ep in entry_points(group="sonitor.commands"):
        try:
            register = ep.load()
        except ImportError as exc:  # the plugin package itself is broken or absent
            missing.append(f"{ep.name} ({exc})")
            continue
        module = sys.modules.get(ep.module)
        absent = _not_installed(tuple(getattr(module, "REQUIRES", ())))
        if absent:
            extra = getattr(module, "EXTRA", ep.name)
            hint = f"the {extra} extra: pip install 'sonitor[{extra}]'"
            why = f"needs {hint} ({', '.join(absent)} not installed)"
            need.setdefault(hint, []).extend(_hint_commands(register, subparsers, why))
            continue
        register(subparsers)
    missing += [f"{', '.join(names)} need {hint}" for hint, names in need.items()]
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
        parser.epilog = "Some subcommands are unavailable: " + "; ".join(missing) + "."
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
    configure_logging(args.verbose)  # priorities for `journalctl -p` under systemd
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
