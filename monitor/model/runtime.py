"""Encoder inference with onnxruntime alone: the runtime path of the daemon, enrol and score.

Two ways to embed audio, giving the same numbers:

- `Embedder.embed(waves)`: the full graph ``encoder.onnx`` (waveform in, embedding out);
- the split path for streaming, so the STFT runs once per hop of new audio and not once per
  window: ``frontend.onnx`` turns audio into mel frames ("valid" framing, no padding: frame i of a
  chunk is centred on chunk sample ``n_fft // 2 + i * hop_length``), and ``backbone.onnx`` turns
  the frames of one window into its embedding (per-window dB floor, normalisation, network,
  pooling). `FrameStream` keeps the few samples of overlap between chunks, so consecutive hops are
  framed independently and concatenated.

Edge handling. The full graph frames a window like ``torch.stft(center=True)``: frame j is
centred on sample ``j * hop_length`` and the first/last ``n_fft // 2`` samples are reflected. A
`FrameStream` reflects only at the start of a stream and, on `flush()`, at its end; a window in
the middle of a stream gets its first and last ``ceil(n_fft / 2 / hop_length)`` frames (2 of 1001
for CED) from the real neighbouring audio instead of a reflection. So a file scored as one window
gives exactly the full graph's numbers, and a window inside a longer recording differs from the
full graph run on that window alone only in those edge frames (which is the better estimate).

Separators. A "frames" separator (``separator.onnx``: mel frames with ``context_frames`` of
context on each side -> masked centre frames; `training.separator`) runs inside the split path:
`FrameStream` passes each hop's new frames plus the context through it before they reach the
windows, replicating the first/last frame at the ends of a stream as the full graph does at the
ends of a window (which already contains the separator). Frames are then returned
``context_frames`` hops later. A "waveform" separator (the older kind) must see each window's
audio, so the split path is off and every window runs the full graph.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import PackageError

_META_FRONTEND = "sonitor.frontend"
_META_SEPARATOR = "sonitor.separator"


def session_options(threads: int = 1) -> Any:
    """One intra-op pool of ``threads``, sequential execution: predictable on a shared PC."""
    import onnxruntime as ort

    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads must sleep, not spin: spinning cost the daemon 0.44 cores for one
    # source with 2 threads, against 0.055 cores without (benchmarks/bench_daemon.py).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def open_session(path: str | Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's own exception types
        raise PackageError(f"{path}: cannot load the ONNX model ({exc})") from None


class _Graph:
    """An onnxruntime session with one input and one output."""

    def __init__(self, path: Path, threads: int) -> None:
        self.path = path
        self.session = open_session(path, threads)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: x})[0]


class Embedder:
    """Embeds waveforms with a package's encoder in onnxruntime (no torch).

    ``package_or_paths``: a `ModelPackage`, a package path, or a mapping with ``encoder`` and
    optionally ``frontend``, ``backbone`` and ``separator`` ONNX paths (front-end parameters then
    come from the graphs' metadata, written by `sonitor export`).
    """

    def __init__(
        self, package_or_paths: Any, threads: int = 1, precision: str | None = None
    ) -> None:
        from monitor.model.package import ModelPackage

        pkg = package_or_paths
        if isinstance(pkg, (str, Path)):
            pkg = ModelPackage.load(pkg)
        if isinstance(pkg, ModelPackage):
            paths: dict[str, Path | None] = {
                "encoder": pkg.encoder_file(precision),
                "frontend": pkg.frontend_file(),
                "backbone": pkg.backbone_file(precision),
                "separator": pkg.separator_path,
            }
            framing: tuple[int, int, int] | None = (
                pkg.frontend.n_fft,
                pkg.frontend.hop_length,
                pkg.frontend.n_mels,
            )
            self.sample_rate = pkg.sample_rate
            self.embedding_dim: int | None = pkg.embedding_dim
        elif isinstance(pkg, Mapping):
            paths = {
                k: (Path(pkg[k]) if pkg.get(k) else None)
                for k in ("encoder", "frontend", "backbone", "separator")
            }
            if paths["encoder"] is None:
                raise ValueError("Embedder: the paths mapping needs an 'encoder' entry")
            framing = None
            self.sample_rate = 16000
            self.embedding_dim = None
        else:
            raise TypeError(f"Embedder: expected a ModelPackage, a path or a mapping, got {pkg!r}")
        self.threads = threads
        self.encoder = _Graph(paths["encoder"], threads)  # type: ignore[arg-type]
        self.separator = _Graph(paths["separator"], threads) if paths["separator"] else None
        self.separator_kind: str | None = None
        self.context_frames = 0
        self.frontend_graph = _Graph(paths["frontend"], threads) if paths["frontend"] else None
        self.backbone = _Graph(paths["backbone"], threads) if paths["backbone"] else None
        if framing is None:
            meta = self.encoder.metadata.get(_META_FRONTEND)
            if meta is None:
                raise PackageError(f"{paths['encoder']}: no '{_META_FRONTEND}' metadata")
            frontend = json.loads(meta)
            self.sample_rate = int(frontend.get("sample_rate", 16000))
            # a graph without a log-mel front-end has no framing: the full graph is all there is
            framing = (
                int(frontend.get("n_fft", 1)),
                int(frontend.get("hop_length", 1)),
                int(frontend.get("n_mels", 1)),
            )
        self.n_fft, self.hop_length, self.n_mels = framing
        self.pad = self.n_fft // 2
        if self.separator is not None:
            self._separator_setup(pkg)

    def _separator_setup(self, pkg: Any) -> None:
        """Frames or waveform separator, and its context, from the manifest or graph metadata."""
        from monitor.model.package import ModelPackage

        assert self.separator is not None
        graph_kind = "frames" if self.separator.input == "frames" else "waveform"
        if isinstance(pkg, ModelPackage) and pkg.separator is not None:
            sep = pkg.separator  # validated with the package
            kind = sep.input or graph_kind
            context, n_mels, hop = sep.context_frames, sep.n_mels, sep.hop_length
        else:
            info: dict[str, Any] = {}
            if _META_SEPARATOR in self.separator.metadata:
                info = json.loads(self.separator.metadata[_META_SEPARATOR])
            kind = info.get("input") or graph_kind
            context = info.get("context_frames")
            n_mels, hop = info.get("n_mels"), info.get("hop_length")
        self.separator_kind = kind
        if kind != "frames":
            return
        path = self.separator.path
        self.context_frames = int(context if context is not None else -1)
        if self.context_frames < 0:
            raise PackageError(f"{path}: a frames separator needs 'context_frames'")
        n_mels_ok = n_mels is None or int(n_mels) == self.n_mels
        if not n_mels_ok or (hop is not None and int(hop) != self.hop_length):
            raise PackageError(
                f"{path}: separator front-end (n_mels {n_mels}, hop {hop}) does not match the "
                f"encoder's (n_mels {self.n_mels}, hop {self.hop_length})"
            )

    # ----------------------------------------------------------------- full graph

    @property
    def streaming(self) -> bool:
        """True when the split graphs exist and no separator must see the waveform first."""
        split = self.frontend_graph is not None and self.backbone is not None
        return split and (self.separator is None or self.separator_kind == "frames")

    @staticmethod
    def _batch(x: np.ndarray, ndim: int, what: str) -> tuple[np.ndarray, bool]:
        x = np.asarray(x, dtype=np.float32)
        single = x.ndim == ndim - 1
        if single:
            x = x[None]
        if x.ndim != ndim:
            raise ValueError(f"{what}: expected {ndim - 1} or {ndim} dimensions, got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{what}: input contains NaN or inf")
        return np.ascontiguousarray(x), single

    def separate(self, waves: np.ndarray) -> np.ndarray:
        """Waveform separator only; a frames separator is inside the full graph already."""
        if self.separator is None or self.separator_kind == "frames":
            return np.asarray(waves, dtype=np.float32)
        x, single = self._batch(waves, 2, "separate")
        y = self.separator(x)
        return y[0] if single else y

    def embed(self, waves: np.ndarray) -> np.ndarray:
        """``[B, T]`` (or ``[T]``) float32 waveforms -> ``[B, D]`` embeddings (full graph)."""
        x, _ = self._batch(waves, 2, "embed")
        if x.shape[1] < self.n_fft:
            raise ValueError(
                f"embed: {x.shape[1]} samples is shorter than one frame ({self.n_fft})"
            )
        if self.separator is not None and self.separator_kind != "frames":
            x = np.ascontiguousarray(self.separator(x), dtype=np.float32)
        return self.encoder(x)

    # ----------------------------------------------------------------- split path

    def frames(self, chunk: np.ndarray) -> np.ndarray:
        """Audio ``[L]`` or ``[B, L]`` -> mel frames ``[n_mels, F]`` / ``[B, n_mels, F]``.

        Valid framing: ``F = 1 + (L - n_fft) // hop_length``, frame i centred on sample
        ``n_fft // 2 + i * hop_length``; trailing samples that do not fill a frame are ignored.
        """
        if self.frontend_graph is None:
            raise PackageError("this encoder has no split front-end (frontend.onnx)")
        x, single = self._batch(chunk, 2, "frames")
        if x.shape[1] < self.n_fft:
            raise ValueError(f"frames: a chunk needs >= {self.n_fft} samples, got {x.shape[1]}")
        out = self.frontend_graph(x)
        return out[0] if single else out

    def separate_frames(self, frames: np.ndarray) -> np.ndarray:
        """``[B, n_mels, F + 2 * context_frames]`` unfloored dB -> masked ``[B, n_mels, F]``."""
        if self.separator is None or self.separator_kind != "frames":
            raise PackageError("this package has no frames separator")
        x, single = self._batch(frames, 3, "separate_frames")
        if x.shape[2] <= 2 * self.context_frames:
            raise ValueError(
                f"separate_frames: need > {2 * self.context_frames} frames, got {x.shape[2]}"
            )
        y = self.separator(x)
        return y[0] if single else y

    def embed_frames(self, frames: np.ndarray) -> np.ndarray:
        """Mel frames of whole windows ``[B, n_mels, F]`` (or ``[n_mels, F]``) -> ``[B, D]``."""
        if self.backbone is None:
            raise PackageError("this encoder has no split backbone (backbone.onnx)")
        x, _ = self._batch(frames, 3, "embed_frames")
        if x.shape[1] != self.n_mels:
            raise ValueError(f"embed_frames: expected {self.n_mels} mel bands, got {x.shape[1]}")
        return self.backbone(x)

    def frames_per_window(self, n_samples: int) -> int:
        """Frames of a centred window of ``n_samples`` (1001 for 10 s of CED)."""
        return 1 + n_samples // self.hop_length


class FrameStream:
    """Streaming front-end of one audio source: frame j is centred on stream sample j * hop.

    `push` returns the frames whose whole support has arrived; `frames_done` counts them, so the
    frames of the window ``[s, s + N)`` (s, N multiples of the hop) are the stream frames
    ``s // hop ... (s + N) // hop`` inclusive, complete once ``pad`` samples past its end have
    been pushed: ``n_fft // 2``, plus ``context_frames * hop`` with a frames separator (each
    frame is separated once, with that many frames of context on each side).
    """

    def __init__(self, embedder: Embedder) -> None:
        if embedder.frontend_graph is None:
            raise PackageError("FrameStream needs an encoder with a split front-end")
        self.embedder = embedder
        self.hop = embedder.hop_length
        self.n_fft = embedder.n_fft
        self._reflect = embedder.pad
        # duck-typed front-ends (tests, tools) may have no separator attributes at all
        self._separating = getattr(embedder, "separator_kind", None) == "frames"
        self.context = int(getattr(embedder, "context_frames", 0)) if self._separating else 0
        self.pad = embedder.pad + self.context * self.hop  # lookahead in samples
        self._ctx: np.ndarray | None = None  # unseparated frames still needed as context
        self._buf = np.zeros(0, dtype=np.float32)
        self._started = False
        self._finished = False
        self.samples_in = 0
        self.frames_done = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add audio; return the new complete frames ``[n_mels, k]`` (k may be 0)."""
        if self._finished:
            raise RuntimeError("FrameStream: push after flush")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples_in += x.size
        self._buf = np.concatenate([self._buf, x]) if self._buf.size else x.copy()
        if not self._started:
            if self._buf.size <= self._reflect:
                return self._empty()
            # the stream start is reflected exactly like torch.stft(center=True, "reflect")
            self._buf = np.concatenate([self._buf[1 : self._reflect + 1][::-1], self._buf])
            self._started = True
        return self._drain()

    def flush(self) -> np.ndarray:
        """End of the stream: reflect-pad its end and return the remaining frames."""
        if self._finished:
            return self._empty()
        self._finished = True
        if not self._started:
            if self._buf.size <= self._reflect:
                return self._empty()
            self._buf = np.concatenate([self._buf[1 : self._reflect + 1][::-1], self._buf])
            self._started = True
        tail = self._buf[-self._reflect - 1 : -1][::-1]
        self._buf = np.concatenate([self._buf, tail])
        out = self._drain(final=True)
        self._buf = np.zeros(0, dtype=np.float32)
        return out

    def _drain(self, final: bool = False) -> np.ndarray:
        k = 0 if self._buf.size < self.n_fft else 1 + (self._buf.size - self.n_fft) // self.hop
        out = self._empty()
        if k:
            used = self.n_fft + (k - 1) * self.hop
            out = self.embedder.frames(self._buf[:used])
            self._buf = self._buf[k * self.hop :]
        if self._separating:
            out = self._separate(out, final)
        self.frames_done += out.shape[1]
        return out

    def _separate(self, new: np.ndarray, final: bool) -> np.ndarray:
        """Separate every frame that now has its context; keep the rest as history."""
        c = self.context
        if self._ctx is None:
            if new.shape[1] == 0:
                return new
            new = np.concatenate([np.repeat(new[:, :1], c, axis=1), new], axis=1)
            self._ctx = new[:, :0]
        buf = np.concatenate([self._ctx, new], axis=1)
        if final and buf.shape[1]:
            buf = np.concatenate([buf, np.repeat(buf[:, -1:], c, axis=1)], axis=1)
        if buf.shape[1] <= 2 * c:
            self._ctx = buf
            return self._empty()
        out = self.embedder.separate_frames(buf)
        self._ctx = buf[:, buf.shape[1] - 2 * c :]
        return out

    def _empty(self) -> np.ndarray:
        return np.zeros((self.embedder.n_mels, 0), dtype=np.float32)


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start samples of the complete windows of a recording (what a live stream would score)."""
    if n_samples < window:
        return []
    return list(range(0, n_samples - window + 1, hop))


def embed_recording(
    embedder: Embedder,
    audio: np.ndarray,
    window_samples: int,
    hop_samples: int,
    *,
    batch_size: int = 8,
    min_samples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed every window of one recording as the daemon does; returns (starts, embeddings).

    The audio is fed to a `FrameStream` one hop at a time and each window's frames go through the
    backbone, so the STFT runs once per hop. A recording shorter than one window becomes a single
    window of its whole length (if it has at least ``min_samples``).
    """
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    starts = window_starts(x.size, window_samples, hop_samples)
    short = not starts
    if short:
        need = min_samples if min_samples is not None else embedder.n_fft
        if x.size < need:
            raise ValueError(f"recording of {x.size} samples is shorter than the minimum {need}")
        starts, window_samples = [0], x.size
    if not embedder.streaming:
        wins = np.stack([x[s : s + window_samples] for s in starts])
        embs = [embedder.embed(wins[i : i + batch_size]) for i in range(0, len(wins), batch_size)]
        return np.asarray(starts), np.concatenate(embs)
    if len(starts) > 1 and hop_samples % embedder.hop_length:
        raise ValueError(
            f"the window hop ({hop_samples} samples) must be a multiple of the frame hop "
            f"({embedder.hop_length} samples)"
        )
    stream = FrameStream(embedder)
    parts = [stream.push(x[i : i + hop_samples]) for i in range(0, x.size, hop_samples)]
    parts.append(stream.flush())
    frames = np.concatenate(parts, axis=1)
    n_win_frames = embedder.frames_per_window(window_samples)
    h = embedder.hop_length
    wins = np.stack([frames[:, s // h : s // h + n_win_frames] for s in starts])
    embs = [
        embedder.embed_frames(wins[i : i + batch_size]) for i in range(0, len(wins), batch_size)
    ]
    return np.asarray(starts), np.concatenate(embs)
