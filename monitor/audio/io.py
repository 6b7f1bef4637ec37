"""Audio file I/O for the runtime: any WAV/FLAC in, float32 mono at 16 kHz out.

Only numpy, soundfile (libsndfile) and soxr: the daemon loads this, so no torch. Every problem with
a user's file surfaces as `AudioError` naming the file and the cause, because a plant engineer
reading a log line needs to know *which* recording is bad, not a libsndfile stack trace.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from monitor.errors import AudioError

# soxr "HQ" (20-bit precision, ~linear phase): transparent for analysis, fast enough for live
# capture; "VHQ" costs about twice as much for no audible or measurable benefit here.
RESAMPLE_QUALITY = "HQ"
_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".aiff": "AIFF", ".aif": "AIFF"}


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file (no samples read)."""

    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    subtype: str


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: audio file not found")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")


def _open(path: Path) -> sf.SoundFile:
    """Open for reading; translate libsndfile's and the OS's complaints into AudioError."""
    _check_exists(path)
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError, ValueError) as exc:
        raise AudioError(
            f"{path}: cannot read audio (corrupt, truncated or unsupported): {exc}"
        ) from exc
    if f.frames <= 0:
        f.close()
        raise AudioError(f"{path}: audio file is empty (0 frames)")
    if f.samplerate <= 0:
        f.close()
        raise AudioError(f"{path}: invalid sample rate {f.samplerate} in the header")
    return f


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header: rate, channels, frames, duration, subtype (e.g. PCM_16, FLOAT)."""
    path = Path(path)
    with _open(path) as f:
        return AudioInfo(
            sample_rate=int(f.samplerate),
            channels=int(f.channels),
            frames=int(f.frames),
            duration_s=f.frames / f.samplerate,
            subtype=str(f.subtype),
        )


def _to_mono(block: np.ndarray, channel: int | None) -> np.ndarray:
    """Downmix (mean) or pick one channel of a (frames, channels) block."""
    if channel is None:
        return block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
    return block[:, channel]


def _check_channel(channel: int | None, channels: int, path: Path) -> None:
    if channel is None:
        return
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise AudioError(f"{path}: channel must be an integer or None, got {channel!r}")
    if not 0 <= channel < channels:
        raise AudioError(
            f"{path}: channel {channel} out of range; the file has {channels} channel(s) "
            f"(valid: 0..{channels - 1})"
        )


def _check_finite(x: np.ndarray, path: Path) -> None:
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise AudioError(f"{path}: contains {bad} NaN or infinite sample(s); cannot use it")


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample with soxr (HQ); 1-D or (frames, channels). Returns float32.

    Why soxr: band-limited, alias-free resampling of 44.1/48 kHz capture devices to 16 kHz, in C.
    """
    for name, rate in (("sr_in", sr_in), ("sr_out", sr_out)):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise ValueError(f"{name} must be a positive integer sample rate, got {rate!r}")
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out or x.shape[0] == 0:
        return x
    return np.asarray(soxr.resample(x, sr_in, sr_out, quality=RESAMPLE_QUALITY), np.float32)


def load_audio(
    path: str | os.PathLike,
    sr: int = 16000,
    channel: int | None = None,
    dtype: type | np.dtype = np.float32,
) -> np.ndarray:
    """Load any WAV/FLAC (PCM 8-32 bit, float) as 1-D audio at `sr` in [-1, 1].

    `channel=None` averages all channels; an int picks that channel (0-based). Float files whose
    samples exceed +-1 are clipped (so are tiny resampling overshoots), NaN/inf are refused.
    """
    path = Path(path)
    with _open(path) as f:
        _check_channel(channel, f.channels, path)
        try:
            data = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise AudioError(f"{path}: reading the samples failed: {exc}") from exc
        file_sr = int(f.samplerate)
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio file is empty (0 frames could be read)")
    _check_finite(data, path)
    x = _to_mono(data, channel)
    if file_sr != sr:
        x = resample(x, file_sr, sr)
    np.clip(x, -1.0, 1.0, out=x)
    return np.ascontiguousarray(x, dtype=dtype)


def stream_audio(
    path: str | os.PathLike,
    sr: int = 16000,
    channel: int | None = None,
    block_s: float = 10.0,
) -> Iterator[np.ndarray]:
    """Yield a recording of any length as consecutive float32 mono blocks at `sr`.

    Memory stays at one block (a day-long recording never sits in RAM). Resampling runs as one
    continuous soxr stream, so block edges carry no artefacts; block sizes vary slightly.
    """
    path = Path(path)
    if block_s <= 0:
        raise ValueError(f"block_s must be > 0, got {block_s!r}")
    with _open(path) as f:
        _check_channel(channel, f.channels, path)
        file_sr = int(f.samplerate)
        stream = None
        if file_sr != sr:
            stream = soxr.ResampleStream(file_sr, sr, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        blocksize = max(1, int(round(block_s * file_sr)))
        try:
            for block in f.blocks(blocksize=blocksize, dtype="float32", always_2d=True):
                _check_finite(block, path)
                x = np.ascontiguousarray(_to_mono(block, channel), np.float32)
                if stream is not None:
                    x = stream.resample_chunk(x, last=False)
                if x.size:
                    yield np.clip(x, -1.0, 1.0)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise AudioError(f"{path}: reading the samples failed: {exc}") from exc
        if stream is not None:
            tail = stream.resample_chunk(np.zeros(0, np.float32), last=True)
            if tail.size:
                yield np.clip(tail, -1.0, 1.0)


def write_wav(
    path: str | os.PathLike,
    x: np.ndarray,
    sr: int = 16000,
    subtype: str = "PCM_16",
    comment: str | None = None,
) -> Path:
    """Write audio (1-D, or (frames, channels)) atomically; the format follows the suffix.

    Atomic (temporary file + rename) because readers such as the event-clip uploader must never
    see half a file. PCM subtypes are clipped to [-1, 1] first: libsndfile would otherwise wrap.
    `comment` goes into the file's metadata (e.g. "SYNTHETIC ...").
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"{path}: unknown audio suffix; use one of {sorted(_FORMATS)}")
    if not sf.check_format(fmt, subtype):
        raise AudioError(f"{path}: subtype {subtype!r} cannot be written as {fmt}")
    x = np.asarray(x)
    if x.ndim not in (1, 2) or x.shape[0] == 0:
        raise AudioError(
            f"{path}: expected non-empty 1-D or (frames, channels) audio, got shape {x.shape}"
        )
    x = x.astype(np.float32 if subtype != "DOUBLE" else np.float64, copy=False)
    _check_finite(x, path)
    if subtype.startswith("PCM") or subtype in ("ULAW", "ALAW"):
        x = np.clip(x, -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        channels = 1 if x.ndim == 1 else x.shape[1]
        with sf.SoundFile(
            tmp, "w", samplerate=int(sr), channels=channels, format=fmt, subtype=subtype
        ) as f:
            if comment:
                f.comment = comment
            f.write(x)
        os.replace(tmp, path)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise AudioError(f"{path}: cannot write audio: {exc}") from exc
    return path
