"""Reading a config file: YAML without duplicate keys, validation errors as `file:line: key`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from monitor.config.base import NAME_PATTERN
from monitor.config.config import Config
from monitor.config.sources import SOURCE_TYPES
from monitor.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def format_loc(loc: tuple[Any, ...]) -> str:
    """('sources', 1, 'file', 'gain_db') -> 'sources[1].gain_db' (union tags dropped)."""
    out = ""
    prev_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            prev_index = True
            continue
        if prev_index and part in SOURCE_TYPES:
            prev_index = False
            continue
        prev_index = False
        part = str(part)
        if part.startswith(("function-", "tagged-union[", "union[")):
            continue
        out += f".{part}" if out else part
    return out or "(top level)"


def _node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc` (or of its deepest existing parent)."""
    node = root
    if node is None:
        return None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for key_node, value_node in node.value:
                if getattr(key_node, "value", None) == str(part):
                    nxt = value_node
                    break
            if nxt is None:
                if isinstance(part, str) and part in SOURCE_TYPES:
                    continue  # discriminated-union tag: not a YAML key
                break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
    return node.start_mark.line + 1


def _describe(err: Mapping[str, Any]) -> str:
    msg, kind = err["msg"], err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        tag = err.get("ctx", {}).get("tag")
        return f"unknown source type {tag!r} (expected one of: {', '.join(SOURCE_TYPES)})"
    if kind == "union_tag_not_found":
        return f"required key is missing (one of: {', '.join(SOURCE_TYPES)})"
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NAME_PATTERN:
        msg = "must be 1-64 letters, digits, '_' or '-', starting with a letter or digit"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if "input" in err and err["type"] not in ("model_type", "union_tag_not_found"):
        value = err["input"]
        if not isinstance(value, dict | list):
            return f"{msg} (got {value!r})"
    return msg


def parse_config(text: str, path: Path | str = "<config>") -> Config:
    """Parse and validate YAML text; `path` names the file in errors and anchors relative paths."""
    path = Path(path)
    try:
        root = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections, got {type(data).__name__}"
        )
    try:
        return Config.model_validate(data, context={"base_dir": path.parent.resolve()})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc += ("type",)
            line = _node_line(root, loc)
            where = f"{path}:{line}" if line else str(path)
            lines.append(f"{where}: {format_loc(loc)}: {_describe(err)}")
        head = f"{path}: invalid config ({len(lines)} error{'s' if len(lines) > 1 else ''})"
        raise ConfigError(head + "\n  " + "\n  ".join(lines)) from None


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; every problem is a ConfigError naming file, line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    return parse_config(text, path)
