"""CED audio transformers (Dinkel et al., ICASSP 2024) and a strict loader for official weights.

Module names follow the original ``RicherMans/CED`` ``AudioTransformer`` exactly, so its ``.pt``
state dicts load without renaming; the Hugging Face ``mispeech/ced-*`` ``model.safetensors``
layout is mapped onto the same names. Pretrained weights cannot be downloaded here: users bring
them (see :func:`load_ced_checkpoint`).

Behaviour kept from the original:
- front-end buffers ``front_end.0.spectrogram.window`` / ``front_end.0.mel_scale.fb`` (loaded from a
  ``.pt``; computed for HF checkpoints, which do not carry them);
- ``init_bn``: BatchNorm2d over the 64 mel bins (mel axis as the channel axis);
- 16x16 patches, trailing frames that do not fill a patch dropped; learned time (63) and
  frequency (4) position tables, a short input uses the first t time entries; tokens flattened
  frequency-major; no CLS token;
- inputs longer than 1012 frames are split into 1012-frame chunks after ``init_bn``; a short last
  chunk is zero-padded to 1012 frames (in the normalised domain, as the original does with its
  default ``pad_last=True``) and every chunk's pooled output is averaged.

Deliberate differences (both make a clip's embedding independent of the rest of its batch or fix
an edge case): the 120 dB floor is per clip (torchaudio takes one max over a 3-D batch), and an
input of an exact multiple of 1012 frames keeps its last chunk (the original drops it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from monitor.audio import frontend as fe
from monitor.errors import CheckpointError
from training.features import CEDFrontEnd

CED_SIZES: dict[str, tuple[int, int]] = {
    "tiny": (192, 3),
    "mini": (256, 4),
    "small": (384, 6),
    "base": (768, 12),
}
CED_DEPTH = 12
CED_MLP_RATIO = 4
CED_N_CLASSES = 527
_N_FREQ_PATCHES = fe.CED_N_MELS // fe.CED_PATCH  # 4
_N_TIME_PATCHES = fe.CED_TARGET_FRAMES // fe.CED_PATCH  # 63
# Fewest samples that give one 16-frame patch with the centred STFT: 1 + n // 160 >= 16.
CED_MIN_SAMPLES = (fe.CED_PATCH - 1) * fe.CED_HOP


class _SwapAxes12(nn.Module):
    """Swap axes 1 and 2 (``b c f t <-> b f c t``) so BatchNorm2d normalises per mel bin."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=fe.CED_PATCH, stride=fe.CED_PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _Attention(nn.Module):
    """Multi-head self-attention with explicit q.k^T softmax, as the original (ONNX opset 17)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as the original
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, CED_MLP_RATIO * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CED(nn.Module):
    """CED encoder: waveform ``[B, samples]`` at 16 kHz -> clip embedding ``[B, embed_dim]``.

    ``embed_blocks`` picks the blocks (0-11) whose outputs make the embedding. Each selected
    block's output is mean-pooled over tokens and the pooled vectors are averaged. Block 11 is
    taken after the final ``norm`` (the authors' HEAR wrapper: mean of ``forward_features``);
    intermediate blocks are the raw residual stream (no extra LayerNorm), mean over tokens.
    """

    def __init__(
        self,
        size: str = "mini",
        embed_blocks: Sequence[int] = (11,),
        n_classes: int = CED_N_CLASSES,
    ) -> None:
        super().__init__()
        if size not in CED_SIZES:
            raise ValueError(f"unknown CED size {size!r}; choose one of {sorted(CED_SIZES)}")
        blocks_sel = tuple(int(i) for i in embed_blocks)
        if not blocks_sel or any(not 0 <= i < CED_DEPTH for i in blocks_sel):
            raise ValueError(f"embed_blocks must be non-empty indices in 0..11, got {embed_blocks}")
        dim, heads = CED_SIZES[size]
        self.size, self.embed_dim, self.n_classes = size, dim, n_classes
        self.embed_blocks = tuple(sorted(set(blocks_sel)))

        self.front_end = CEDFrontEnd()
        self.init_bn = nn.Sequential(
            _SwapAxes12(), nn.BatchNorm2d(fe.CED_N_MELS, momentum=0.01), _SwapAxes12()
        )
        self.patch_embed = _PatchEmbed(dim)
        self.time_pos_embed = nn.Parameter(torch.randn(1, dim, 1, _N_TIME_PATCHES) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, dim, _N_FREQ_PATCHES, 1) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(CED_DEPTH)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.outputlayer = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_classes))
        self.apply(_init_weights)

    # -- internals -------------------------------------------------------------------------
    def _check_length(self, waveform: torch.Tensor) -> None:
        if waveform.dim() != 2:
            raise ValueError(
                f"CED expects a waveform batch [B, samples], got {tuple(waveform.shape)}"
            )
        if not torch.jit.is_tracing() and waveform.shape[-1] < CED_MIN_SAMPLES:
            raise ValueError(
                f"CED needs at least {CED_MIN_SAMPLES} samples ({CED_MIN_SAMPLES / fe.SAMPLE_RATE}"
                f" s at 16 kHz, one 16-frame patch); got {waveform.shape[-1]}"
            )

    def _chunks(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised log-mel cut into chunks: ``[n * B, 1, 64, L]`` (chunk-major) and n.

        L = min(frames, 1012). The size arithmetic stays symbolic under both ONNX exporters
        (traced tensors for TorchScript, SymInts for torch.export), so one graph serves short
        and chunked inputs.
        """
        self._check_length(waveform)
        x = self.init_bn(self.front_end(waveform).unsqueeze(1))  # [B, 1, 64, T]
        b, _, f, t = x.shape
        if torch.jit.is_tracing():  # TorchScript ONNX export: sizes as traced tensors
            t = torch.as_tensor(t)
            length = torch.clamp(t, max=fe.CED_TARGET_FRAMES)
        else:  # eager ints, or symbolic ints under torch.export
            length = torch.sym_min(t, fe.CED_TARGET_FRAMES)
        n = (t + length - 1) // length
        x = torch.cat(
            [x, torch.zeros(b, 1, f, n * length - t, dtype=x.dtype, device=x.device)], dim=-1
        )
        x = x.reshape(b, f, n, length).permute(2, 0, 1, 3).reshape(n * b, 1, f, length)
        return x, n

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # [N, D, 4, t]
        x = x + self.time_pos_embed[:, :, :, : x.shape[-1]] + self.freq_pos_embed
        return x.flatten(2).transpose(1, 2)  # [N, 4 * t, D], frequency-major

    @staticmethod
    def _merge(pooled: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Average chunk-major ``[n * B, ...]`` over the chunks."""
        return pooled.reshape(n, -1, *pooled.shape[1:]).mean(0)

    # -- public ----------------------------------------------------------------------------
    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Clip embedding ``[B, embed_dim]`` from the selected blocks (see class docstring)."""
        x, n = self._chunks(waveform)
        x = self._tokens(x)
        last = self.embed_blocks[-1]
        pooled = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.embed_blocks:
                out = self.norm(x) if i == CED_DEPTH - 1 else x
                pooled.append(out.mean(1))
            if i == last:
                break  # later blocks do not contribute
        emb = torch.stack(pooled, 0).mean(0)
        return self._merge(emb, n)

    def forward_tokens(self, waveform: torch.Tensor) -> list[torch.Tensor]:
        """Raw outputs of all 12 blocks (before the final norm): each ``[B, n * 4 * t, D]``.

        For chunked inputs the chunks' tokens are concatenated along the token axis.
        """
        x, n = self._chunks(waveform)
        x = self._tokens(x)
        outs = []
        for block in self.blocks:
            x = block(x)
            tokens = x.reshape(n, -1, x.shape[1], x.shape[2]).transpose(0, 1)
            outs.append(tokens.reshape(tokens.shape[0], -1, x.shape[2]))
        return outs

    def forward_logits(self, waveform: torch.Tensor) -> torch.Tensor:
        """AudioSet logits ``[B, n_classes]`` (pre-sigmoid), averaged over chunks.

        The original averages sigmoid probabilities over chunks; for one chunk (<= 10.1 s)
        ``sigmoid(forward_logits)`` is exactly its output.
        """
        x, n = self._chunks(waveform)
        x = self.norm(self.blocks(self._tokens(x)))
        return self._merge(self.outputlayer(x.mean(1)), n)


def _init_weights(module: nn.Module) -> None:
    """The original's initialisation (truncated normal linears, unit LayerNorms)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# -- checkpoints -----------------------------------------------------------------------------

_FRONT_END_KEYS = ("front_end.0.spectrogram.window", "front_end.0.mel_scale.fb")
_OPTIONAL_KEYS = ("init_bn.1.num_batches_tracked",)  # a counter, unused in eval
_SIZE_KEY = "patch_embed.proj.bias"


def ced_state_dict_names(
    size: str, format: str = "pt", n_classes: int = CED_N_CLASSES
) -> dict[str, tuple[int, ...]]:
    """Official checkpoint key names and shapes for ``size`` in the ``"pt"`` or ``"hf"`` layout."""
    if size not in CED_SIZES:
        raise ValueError(f"unknown CED size {size!r}; choose one of {sorted(CED_SIZES)}")
    if format not in ("pt", "hf"):
        raise ValueError(f"format must be 'pt' or 'hf', got {format!r}")
    d = CED_SIZES[size][0]
    n_freqs = fe.CED_N_FFT // 2 + 1
    names: dict[str, tuple[int, ...]] = {
        "front_end.0.spectrogram.window": (fe.CED_WIN_LENGTH,),
        "front_end.0.mel_scale.fb": (n_freqs, fe.CED_N_MELS),
    }
    for p in ("weight", "bias", "running_mean", "running_var"):
        names[f"init_bn.1.{p}"] = (fe.CED_N_MELS,)
    names["init_bn.1.num_batches_tracked"] = ()
    names["patch_embed.proj.weight"] = (d, 1, fe.CED_PATCH, fe.CED_PATCH)
    names["patch_embed.proj.bias"] = (d,)
    names["time_pos_embed"] = (1, d, 1, _N_TIME_PATCHES)
    names["freq_pos_embed"] = (1, d, _N_FREQ_PATCHES, 1)
    h = CED_MLP_RATIO * d
    for i in range(CED_DEPTH):
        blk = f"blocks.{i}."
        names.update(
            {
                blk + "norm1.weight": (d,),
                blk + "norm1.bias": (d,),
                blk + "attn.qkv.weight": (3 * d, d),
                blk + "attn.qkv.bias": (3 * d,),
                blk + "attn.proj.weight": (d, d),
                blk + "attn.proj.bias": (d,),
                blk + "norm2.weight": (d,),
                blk + "norm2.bias": (d,),
                blk + "mlp.fc1.weight": (h, d),
                blk + "mlp.fc1.bias": (h,),
                blk + "mlp.fc2.weight": (d, h),
                blk + "mlp.fc2.bias": (d,),
            }
        )
    names["norm.weight"] = (d,)
    names["norm.bias"] = (d,)
    names["outputlayer.0.weight"] = (d,)
    names["outputlayer.0.bias"] = (d,)
    names["outputlayer.1.weight"] = (n_classes, d)
    names["outputlayer.1.bias"] = (n_classes,)
    if format == "hf":
        return {_pt_to_hf(k): s for k, s in names.items() if not k.startswith("front_end.")}
    return names


def _pt_to_hf(key: str) -> str:
    key = key.replace("init_bn.1.", "init_bn.", 1)
    return key if key.startswith("outputlayer.") else "encoder." + key


def _hf_to_pt(key: str) -> str:
    if key.startswith("encoder."):
        key = key[len("encoder.") :]
        if key.startswith("init_bn."):
            key = "init_bn.1." + key[len("init_bn.") :]
    return key


def _file_kind(path: Path) -> str:
    """'safetensors' (8-byte header length, then '{'), 'torch' (zip or legacy pickle) or '?'."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch"
    return "?"


def _short_reason(exc: Exception) -> str:
    """The informative line of a torch.load error (its preamble suggests unsafe loading)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported global" in ln:
            return ln.split(". Please use")[0]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or torch ``.pt`` file (no pickle code execution) into a flat dict."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    kind = _file_kind(path)
    if path.suffix == ".safetensors" or kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if kind != "torch":
        raise CheckpointError(f"{path}: neither a torch checkpoint (.pt) nor a safetensors file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many classes; all mean "bad file"
        raise CheckpointError(
            f"{path}: cannot read as a torch checkpoint with weights_only=True "
            f"({_short_reason(exc)}); it must hold only tensors (a state dict), no Python objects"
        ) from exc
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"{path}: expected a state dict of tensors (optionally under 'model'), "
            f"got {type(obj).__name__}"
        )
    return dict(obj)


def _list(keys: Sequence[str], limit: int = 24) -> str:
    """Keys in model order (front-end, stem, blocks, head), the first ``limit`` of them."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _infer_size(state: Mapping[str, torch.Tensor], path: Path) -> str | None:
    t = state.get(_SIZE_KEY)
    if t is None:
        return None
    dims = {d: name for name, (d, _) in CED_SIZES.items()}
    if t.dim() != 1 or int(t.shape[0]) not in dims:
        raise CheckpointError(
            f"{path}: '{_SIZE_KEY}' has shape {tuple(t.shape)}; a CED checkpoint has "
            f"[{'|'.join(str(d) for d in dims)}] (tiny|mini|small|base)"
        )
    return dims[int(t.shape[0])]


def load_ced_checkpoint(
    path: str | Path, size: str | None = None, embed_blocks: Sequence[int] = (11,)
) -> CED:
    """Build a :class:`CED` in eval mode from an official checkpoint.

    Accepts the original ``.pt`` (state dict, possibly under ``model``) and the Hugging Face
    ``model.safetensors`` (``encoder.`` prefix, ``init_bn.`` for ``init_bn.1.``, no front-end
    buffers: those are computed). The size is inferred from the shapes unless given. Any missing
    or unexpected key or wrong shape raises :class:`CheckpointError` naming the file and keys.
    """
    path = Path(path)
    raw = _read_state_dict(path)
    is_hf = any(k.startswith("encoder.") for k in raw)
    state = {_hf_to_pt(k): v for k, v in raw.items()} if is_hf else raw

    inferred = _infer_size(state, path)
    if size is None and inferred is None:
        expected = ced_state_dict_names("mini", "hf" if is_hf else "pt")
        raise CheckpointError(
            f"{path}: not a CED checkpoint (no '{_SIZE_KEY}' to infer the size from); "
            f"missing keys: [{_list([k for k in expected if k not in raw])}]; "
            f"unexpected keys: [{_list([k for k in raw if k not in expected])}]"
        )
    size = size or inferred
    head = state.get("outputlayer.1.bias")
    n_classes = int(head.shape[0]) if head is not None and head.dim() == 1 else CED_N_CLASSES
    model = CED(size, embed_blocks=embed_blocks, n_classes=n_classes)
    own = model.state_dict()

    optional = set(_OPTIONAL_KEYS) | (set(_FRONT_END_KEYS) if is_hf else set())
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        fmt = "Hugging Face safetensors" if is_hf else "original .pt"
        parts = [f"{path}: does not match CED-{size} ({fmt} layout)"]
        if inferred is not None and inferred != size:
            parts.append(f"its shapes are those of CED-{inferred}, but size={size!r} was asked for")
        if missing:
            parts.append(f"missing keys: [{_list(missing)}]")
        if unexpected:
            parts.append(f"unexpected keys: [{_list(unexpected)}]")
        if shapes:
            parts.append(f"shape mismatches: [{_list(shapes)}]")
        raise CheckpointError("; ".join(parts))

    full = {k: state.get(k, own[k]) for k in own}
    model.load_state_dict(full, strict=True)
    return model.eval()


__all__ = [
    "CED",
    "CED_MIN_SAMPLES",
    "CED_SIZES",
    "ced_state_dict_names",
    "load_ced_checkpoint",
]
