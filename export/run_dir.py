"""The trained-run directory: what training leaves behind and `sonitor export --run` reads.

    run.json                   format, recipe, encoder class + constructor arguments, audio
                               parameters (sample rate, window, hop), training data summary
    encoder.safetensors        the encoder's state dict (no pickle)
    machines/<name>/bank.npz   `save_bank` format: training embeddings, domains,
                               the fitted scorer's arrays, leave-one-out scores

The encoder is rebuilt from a class path that must lie inside the ``training`` package (a run
directory never makes us import arbitrary code) and its keyword arguments, then loaded strictly.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from export.onnx_graph import ExportError
from export.package_writer import MachineSpec
from monitor.errors import CheckpointError
from monitor.model.package import load_bank, save_bank, utc_now, validate_machine_name

RUN_FORMAT = "sonitor-run"
RUN_VERSION = 1


def encoder_spec(model: nn.Module) -> dict[str, Any]:
    """Class path and constructor arguments that rebuild ``model``'s architecture.

    Sub-modules passed to a constructor (e.g. SimCLR's encoder + projection head) are nested
    specs under ``children``.
    """
    cls = type(model)
    spec: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}", "kwargs": {}}
    name = cls.__name__
    if isinstance(getattr(model, "init_kwargs", None), dict):
        spec["kwargs"] = dict(model.init_kwargs)
    elif name == "CED":
        spec["kwargs"] = {
            "size": model.size,
            "embed_blocks": list(model.embed_blocks),
            "n_classes": model.n_classes,
        }
    elif name == "ResNetEncoder":
        spec["kwargs"] = {"n_mels": int(model.front_end.n_mels)}
    elif name == "ProjectionHead":
        first, last = model.net[0], model.net[-1]
        spec["kwargs"] = {
            "in_dim": first.in_features,
            "hidden_dim": first.out_features,
            "out_dim": last.out_features,
        }
    elif name == "ProjectedEncoder":
        spec["children"] = {
            "encoder": encoder_spec(model.encoder),
            "head": encoder_spec(model.head),
        }
    else:
        raise ExportError(
            f"cannot save a run of {cls.__module__}.{name}: its constructor arguments are "
            "unknown (give the model an `init_kwargs` dict)"
        )
    return spec


def save_run(
    out: str | Path,
    *,
    recipe: str,
    model: nn.Module,
    machines: Sequence[MachineSpec],
    window_seconds: float,
    hop_seconds: float = 1.0,
    sample_rate: int = 16000,
    training_data: dict[str, Any] | None = None,
    description: dict[str, Any] | None = None,
) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    (out / "machines").mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "encoder.safetensors"))
    from monitor.model.enroll import scorer_spec

    for spec in machines:
        validate_machine_name(spec.name)
        name, params = scorer_spec(spec.scorer)
        (out / "machines" / spec.name).mkdir(parents=True, exist_ok=True)
        save_bank(
            out / "machines" / spec.name / "bank.npz",
            spec.embeddings,
            spec.domains,
            name,
            params,
            spec.scorer,
            spec.scorer.loo_scores(),
        )
    meta = {
        "format": RUN_FORMAT,
        "format_version": RUN_VERSION,
        "created": utc_now(),
        "recipe": recipe,
        "description": description or {},
        "encoder": {**encoder_spec(model), "weights": "encoder.safetensors"},
        "sample_rate": sample_rate,
        "window_seconds": float(window_seconds),
        "hop_seconds": float(hop_seconds),
        "training_data": training_data or {},
        "machines": [s.name for s in machines],
    }
    (out / "run.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return out


@dataclass
class Run:
    path: Path
    meta: dict[str, Any]
    model: nn.Module
    machines: list[MachineSpec] = field(default_factory=list)


def _build(spec: Any, where: Path) -> nn.Module:
    if not isinstance(spec, dict) or not isinstance(spec.get("class"), str):
        raise CheckpointError(f"{where}: an encoder spec lacks its 'class'")
    module, _, cls_name = spec["class"].rpartition(".")
    if not module.startswith("training."):
        raise CheckpointError(
            f"{where}: encoder class {spec['class']!r} is outside the training package; refusing "
            "to import it"
        )
    children = {k: _build(v, where) for k, v in (spec.get("children") or {}).items()}
    try:
        cls = getattr(importlib.import_module(module), cls_name)
        return cls(**children, **spec.get("kwargs", {}))
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot build encoder {spec['class']}: {exc}") from None


def load_run(path: str | Path) -> Run:
    """Read a run directory; every problem is a CheckpointError naming the file."""
    from safetensors.torch import load_file

    from monitor.model.scoring import scorer_by_name, scorer_from_arrays

    path = Path(path)
    mpath = path / "run.json"
    try:
        meta = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{mpath}: missing: {path} is not a run directory") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{mpath}: not valid JSON ({exc})") from None
    if meta.get("format") != RUN_FORMAT or meta.get("format_version") != RUN_VERSION:
        raise CheckpointError(
            f"{mpath}: format {meta.get('format')!r} version {meta.get('format_version')!r}; "
            f"expected {RUN_FORMAT!r} version {RUN_VERSION}"
        )
    model = _build(meta.get("encoder"), mpath)
    wpath = path / meta["encoder"].get("weights", "encoder.safetensors")
    try:
        state = load_file(str(wpath))
    except (OSError, ValueError, Exception) as exc:  # safetensors raises its own error type
        raise CheckpointError(f"{wpath}: cannot read the encoder weights ({exc})") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"{wpath}: does not match {meta['encoder']['class']}: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}, wrong shapes {bad[:10]}"
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    machines = []
    for name in meta.get("machines", []):
        validate_machine_name(name)
        bpath = path / "machines" / name / "bank.npz"
        bank = load_bank(bpath, where=f"{bpath} (machine {name!r})")
        try:
            scorer = scorer_from_arrays(bank.scorer_arrays)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{bpath}: bad scorer arrays ({exc})") from None
        if not scorer.is_fitted:
            scorer = scorer_by_name(bank.scorer_name, **bank.scorer_params).fit(
                bank.embeddings, bank.domain_list()
            )
        machines.append(MachineSpec(name, bank.embeddings, bank.domain_list(), scorer))
    return Run(path, meta, model, machines)
