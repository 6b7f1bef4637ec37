"""Generate `config.example.yaml` from the schema in the `monitor.config` package.

The example is derived, never hand-written, so it cannot drift from what the daemon accepts:
every key appears with its default value and its description as a comment. A test checks that
the committed file equals this output and that it loads.

    python -m monitor.config.example > config.example.yaml
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from monitor.config import Config, DeviceSource, FileSource

_WIDTH = 100
# The two example sources need distinct names and machines; everything else comes from the schema.
_SOURCE_EXAMPLES: dict[type[BaseModel], dict[str, Any]] = {
    DeviceSource: {"type": "device", "name": "pump1", "machine": "pump"},
    FileSource: {"type": "file", "name": "fan-replay", "machine": "fan"},
}

HEADER = """\
# sonitor daemon configuration: every key with its default value.
# Generated from the schema by `python -m monitor.config.example`; do not edit.
# Check a config with `sonitor check-config FILE`; run with `sonitor run --config FILE`.
# Relative paths are relative to the folder of this file. Secrets are given by reference only
# (mqtt.password_env / mqtt.password_file), never inline.
"""


def _scalar(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text.removesuffix("...").strip()


def _comment(text: str, indent: str) -> list[str]:
    width = max(40, _WIDTH - len(indent) - 2)
    return [f"{indent}# {line}" for line in textwrap.wrap(text, width)]


def _submodel(info: FieldInfo) -> type[BaseModel] | None:
    ann = info.annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return None


def _example_value(name: str, info: FieldInfo, overrides: dict[str, Any]) -> tuple[Any, bool]:
    """(value, required) for one field: the default, or the schema's example when required."""
    if name in overrides:
        return overrides[name], info.is_required()
    if not info.is_required():
        default = info.get_default(call_default_factory=True)
        return default, False
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "example" not in extra:
        raise ValueError(f"required field {name!r} has no example in the schema")
    return extra["example"], True


def _emit_model(
    model: type[BaseModel],
    indent: str,
    out: list[str],
    overrides: dict[str, Any] | None = None,
    first_prefix: str | None = None,
) -> None:
    """Write the fields of `model`; `first_prefix` replaces the indent of the first key line
    (used for `- ` list items)."""
    overrides = overrides or {}
    fields = list(model.model_fields.items())
    # A discriminated source shows its `type` first, so a reader sees what kind it is.
    fields.sort(key=lambda item: item[0] != "type")
    first = True
    for name, info in fields:
        sub = _submodel(info)
        description = info.description or ""
        if sub is None:
            value, required = _example_value(name, info, overrides)
            if required and name != "type":
                description += " Required."
        prefix = first_prefix if (first and first_prefix is not None) else indent
        if description and not (first and first_prefix is not None):
            out.extend(_comment(description, indent))
        if sub is not None:
            out.append(f"{prefix}{name}:")
            _emit_model(sub, indent + "  ", out)
        elif name == "sources":
            out.append(f"{prefix}{name}:")
        else:
            out.append(f"{prefix}{name}: {_scalar(value)}")
        first = False


def _emit_sources(indent: str, out: list[str]) -> None:
    for model, overrides in _SOURCE_EXAMPLES.items():
        kind = model.model_fields["type"].description or ""
        out.extend(_comment(f"--- type: {overrides['type']}: {kind}", indent))
        _emit_model(model, indent + "  ", out, overrides, first_prefix=indent + "- ")


def _source_models() -> tuple[type[BaseModel], ...]:
    ann = Config.model_fields["sources"].annotation
    assert get_origin(ann) is list
    (item,) = get_args(ann)
    union = get_args(item)[0]
    return get_args(union)


def generate() -> str:
    """The full example config as YAML text."""
    missing = set(_source_models()) - set(_SOURCE_EXAMPLES)
    if missing:
        raise ValueError(f"no example for source kinds {sorted(m.__name__ for m in missing)}")
    out: list[str] = [HEADER.rstrip("\n")]
    for name, info in Config.model_fields.items():
        out.append("")
        if info.description:
            out.extend(_comment(info.description, ""))
        if name == "sources":
            out.append("sources:")
            _emit_sources("  ", out)
            continue
        sub = _submodel(info)
        if sub is None:
            raise ValueError(f"top-level field {name!r} must be a section")
        out.append(f"{name}:")
        _emit_model(sub, "  ", out)
    return "\n".join(out) + "\n"


def main() -> int:
    sys.stdout.write(generate())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
