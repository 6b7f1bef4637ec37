"""Writing one ONNX graph: the exporter call, sonitor's metadata, and the error export raises.

Every graph sonitor writes (encoder, front-end, backbone, separator) goes through `export_graph`:
the TorchScript exporter at opset 17. It is the exporter that exports the conv-STFT front-end and
CED's shape arithmetic with dynamic lengths at opset 17; the dynamo exporter turns an opset-17
request into opset 18 (its down-conversion of ``Pad`` fails) and needs onnxscript.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from monitor.errors import SonitorError

OPSET = 17


class ExportError(SonitorError):
    """The model cannot be exported, or its ONNX graph does not match PyTorch."""


def set_metadata(path: Path, meta: dict[str, str], out_dim: int | None = None) -> None:
    """Write sonitor's metadata and, when known, the static size of the output's last axis."""
    import onnx

    proto = onnx.load(str(path))
    if out_dim is not None:
        proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value = out_dim
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in meta.items():
        if key in existing:
            existing[key].value = value
        else:
            proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def export_graph(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    names: tuple[str, str],
    dynamic: dict[str, dict[int, str]],
) -> None:
    """`module` (one input, one output, named `names`) to `path`, with the `dynamic` axes."""
    module.eval()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is deprecated but is the one that exports our shape arithmetic
        # at opset 17 (module docstring); its tracer warnings are about the dynamic sizes that
        # the parity checks verify
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[names[0]],
                output_names=[names[1]],
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        except Exception as exc:  # the exporter raises many types; all mean "cannot export"
            raise ExportError(
                f"ONNX export of {type(module).__name__} to {path} failed: {exc}"
            ) from exc
