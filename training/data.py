"""DCASE Task 2 data layouts (2020-2025) and a plain mode for a user's own recordings.

File names carry the labels in DCASE (`section_00_source_train_normal_0001_<attr>_<value>.wav`),
so everything downstream (domains for the metrics, normal/anomaly for AUCs) starts here. Unknown
names raise `DataError`: silently guessing a label would corrupt every metric computed later.

Forms understood (stem = file name without `.wav`/`.flac`):

- 2021-2025 `section_NN_<source|target>_<train|test>_<normal|anomaly>_NNNN[_<attr>_<value>...]`,
  also `..._noAttribute` and no attributes at all;
- labels hidden: `section_NN_<source|target>_test_NNNN` (label None), anonymised eval clips
  `section_NN_NNNN` and `section_NN_test_NNNN` (domain and label None);
- 2025 supplemental clips: a kind word (`machine`/`clean` = clean machine sound, `noise` = noise
  only) among the words before the index. Published DCASE 2025 paths show
  `supplemental/section_00_machine_source_0000_noAttribute.wav`; the baseline README writes
  `section_00_machine_0001_.wav`; third-party loaders expect
  `section_00_source_supplemental_machine_0000.wav` / `section_00_noise_supplemental_normal_0000`.
  The words may come in any order, so all of these parse;
- 2020 `<normal|anomaly>_id_NN_NNNNNNNN` and anonymised `id_NN_NNNNNNNN` (no section, no domain).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from monitor.audio.io import audio_info, load_audio, stream_audio
from monitor.errors import DataError

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
# Folder name -> split. 2021 shipped source_test/ and target_test/; the baseline's rename tool
# writes test_rename/ (labelled copies of the anonymised eval test/ clips).
SPLIT_DIRS = {
    "train": "train",
    "test": "test",
    "source_test": "test",
    "target_test": "test",
    "test_rename": "test",
    "supplemental": "supplemental",
}
_DOMAINS = {"source", "target"}
_SPLITS = {"train", "test", "supplemental"}
_LABELS = {"normal", "anomaly"}
_KINDS = {"machine": "clean", "clean": "clean", "noise": "noise"}
_SLOTS = {
    **dict.fromkeys(_DOMAINS, "domain"),
    **dict.fromkeys(_SPLITS, "split"),
    **dict.fromkeys(_LABELS, "label"),
    **dict.fromkeys(_KINDS, "kind"),
}
_SECTION_RE = re.compile(r"^section_(\d+)_(.*)$")
_ID_RE = re.compile(r"^(?:(normal|anomaly)_)?id_(\d+)_(\d+)$")


@dataclass(frozen=True)
class ClipInfo:
    """One clip and what its name and folder say about it."""

    path: Path
    machine: str
    section: str | None  # "00"; None for 2020 (machine IDs instead)
    domain: str | None  # "source" | "target"; None when unknown/anonymised
    split: str  # "train" | "test" | "supplemental"
    label: str | None  # "normal" | "anomaly"; None when anonymised
    attributes: dict[str, str] = field(default_factory=dict, hash=False)
    index: str | None = None  # the clip number as written ("0001")
    machine_id: str | None = None  # 2020: "id_00"


@dataclass
class MachineData:
    """All clips of one machine type, by split."""

    machine: str
    train: list[ClipInfo] = field(default_factory=list)
    test: list[ClipInfo] = field(default_factory=list)
    supplemental: list[ClipInfo] = field(default_factory=list)


def _parse_attributes(text: str | None) -> dict[str, str]:
    """`car_A1_spd_28V_mic_1` -> {car: A1, spd: 28V, mic: 1}; `noAttribute` -> {}.

    DCASE attribute values contain no underscore, so tokens pair up; an odd trailing token is
    kept as a key with an empty value rather than dropped.
    """
    tokens = [t for t in (text or "").split("_") if t]
    if tokens in ([], ["noAttribute"]):
        return {}
    attrs = {tokens[i]: tokens[i + 1] for i in range(0, len(tokens) - 1, 2)}
    if len(tokens) % 2:
        attrs[tokens[-1]] = ""
    return attrs


def _split_section_name(rest: str) -> tuple[list[str], str, str] | None:
    """Split what follows `section_NN_` into (head words, index, attribute text)."""
    tokens = rest.split("_")
    for i, tok in enumerate(tokens):
        if tok.isdigit():
            return tokens[:i], tok, "_".join(tokens[i + 1 :])
    return None


def _head_fields(head: list[str]) -> dict[str, str] | None:
    """Classify the words before the index; None if any word is unknown or repeated."""
    out: dict[str, str] = {}
    for word in head:
        slot = _SLOTS.get(word)
        if slot is None or slot in out:
            return None
        out[slot] = _KINDS.get(word, word) if slot == "kind" else word
    return out


def clip_kind(path: str | os.PathLike) -> str | None:
    """Supplemental kind from a DCASE 2025 name: "clean", "noise" or None (not stated)."""
    m = _SECTION_RE.match(Path(path).stem)
    parts = _split_section_name(m.group(2)) if m else None
    fields = _head_fields(parts[0]) if parts else None
    return fields.get("kind") if fields else None


def _folder_split(path: Path) -> str | None:
    return SPLIT_DIRS.get(path.parent.name)


def parse_clip_name(
    path: str | os.PathLike, machine: str | None = None, split: str | None = None
) -> ClipInfo:
    """Parse a DCASE clip name (2020-2025 forms, see the module docstring) into a ClipInfo.

    `machine` and `split` default to the folders: `<root>/<machine>/<split>/<file>`. The split is
    taken from the argument, else the folder, else the name (2021+ names state it; 2020 names do
    not); with none of them: DataError.
    """
    path = Path(path)
    stem = path.stem
    if machine is None:
        holder = path.parent.parent if _folder_split(path) else path.parent
        machine = holder.name
    if split is not None and split not in _SPLITS:
        raise DataError(f"{path}: unknown split {split!r}; use one of {sorted(_SPLITS)}")

    section = domain = label = machine_id = None
    attrs: dict[str, str] = {}
    name_split = None
    m = _SECTION_RE.match(stem)
    if m:
        parts = _split_section_name(m.group(2))
        fields = _head_fields(parts[0]) if parts else None
        if fields is None:
            raise DataError(_unrecognised(path))
        section, (_, index, attr_text) = m.group(1), parts
        domain, label = fields.get("domain"), fields.get("label")
        name_split = "supplemental" if "kind" in fields else fields.get("split")
        if fields.get("kind") == "clean" and label is None:
            label = "normal"  # clean supplemental clips are normal machine sound
        attrs = _parse_attributes(attr_text)
    else:
        m2 = _ID_RE.match(stem)
        if not m2:
            raise DataError(_unrecognised(path))
        label, machine_id, index = m2.group(1), f"id_{m2.group(2)}", m2.group(3)

    split = split or _folder_split(path) or name_split
    if split is None:
        raise DataError(
            f"{path}: cannot tell whether this clip is train, test or supplemental: the name "
            f"does not say and its folder {path.parent.name!r} is not one of {sorted(SPLIT_DIRS)}"
        )
    return ClipInfo(path, machine, section, domain, split, label, attrs, index, machine_id)


def _unrecognised(path: Path) -> str:
    return (
        f"{path}: file name not recognised as a DCASE Task 2 clip (expected e.g. "
        "section_00_source_train_normal_0001_<attr>_<value>.wav, section_00_0001.wav or "
        "normal_id_00_00000001.wav)"
    )


def read_attributes_csv(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Read a DCASE `attributes_NN.csv` (file_name,d1p,d1v,d2p,d2v,...) -> {stem: attrs}.

    File names appear with or without `<machine>/<split>/` and `.wav`; keys are bare stems.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the attributes CSV: {exc}") from exc
    if not rows or not rows[0] or rows[0][0].strip() != "file_name":
        raise DataError(f"{path}: attributes CSV must start with a 'file_name,...' header row")
    out: dict[str, dict[str, str]] = {}
    for row in rows[1:]:
        if not row or not row[0].strip():
            continue
        attrs = {}
        for j in range(1, len(row) - 1, 2):
            key, value = row[j].strip(), row[j + 1].strip()
            if key and key != "noAttribute":
                attrs[key] = value
        out[Path(row[0].strip().replace("\\", "/")).stem] = attrs
    return out


def _is_audio(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".")


def _is_machine_dir(d: Path) -> bool:
    return any((d / s).is_dir() for s in SPLIT_DIRS)


def _load_machine(machine_dir: Path, machine: str) -> MachineData:
    csv_attrs: dict[str, dict[str, str]] = {}
    for csv_path in sorted(machine_dir.glob("attributes_*.csv")):
        csv_attrs.update(read_attributes_csv(csv_path))
    folders = [s for s in SPLIT_DIRS if (machine_dir / s).is_dir()]
    if "test_rename" in folders and "test" in folders:
        folders.remove("test")  # same clips; the renamed copies carry the labels
    md = MachineData(machine)
    for folder in folders:
        for p in sorted(f for f in (machine_dir / folder).iterdir() if _is_audio(f)):
            clip = parse_clip_name(p, machine=machine, split=SPLIT_DIRS[folder])
            extra = csv_attrs.get(p.stem)
            if extra:
                clip = replace(clip, attributes={**extra, **clip.attributes})
            getattr(md, clip.split).append(clip)
    for clips in (md.train, md.test, md.supplemental):
        clips.sort(key=lambda c: c.path.name)
    return md


def discover(root: str | os.PathLike) -> dict[str, MachineData]:
    """Find every machine type under `root` (`<root>/<machine>/{train,test,supplemental}/`).

    A root that is itself a machine folder (has `train/` or `test/`, e.g. `dcase2020_dev_id00/`)
    gives one machine named after it. Result sorted by machine name.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (or not a folder)")
    if _is_machine_dir(root):
        dirs = {root.name: root}
    else:
        dirs = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and _is_machine_dir(d)}
    found = {}
    for name in sorted(dirs):
        md = _load_machine(dirs[name], name)
        if md.train or md.test or md.supplemental:
            found[name] = md
        else:
            log.warning("%s: no .wav/.flac clips in its split folders; skipped", dirs[name])
    if not found:
        raise DataError(
            f"{root}: no DCASE clips found; expected <root>/<machine>/train/*.wav (and test/, "
            "supplemental/) or <root>/train/*.wav"
        )
    return found


def supplemental_kind(clips: Iterable[ClipInfo]) -> str | None:
    """What a machine's supplemental clips hold: "clean", "noise", "mixed" or None.

    Read from the DCASE 2025 names (machine/clean vs noise word); clips whose names state no
    kind are ignored; None when no clip states one.
    """
    kinds = {clip_kind(c.path) for c in clips if c.split == "supplemental"} - {None}
    if not kinds:
        return None
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_audio(p))


def discover_plain(root: str | os.PathLike) -> dict[str, list[Path]]:
    """Plain mode: `<root>/<machine>/*.{wav,flac}` -> {machine: files}; a root holding the
    recordings itself is one machine named after the folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (or not a folder)")
    found = {d.name: _audio_files(d) for d in sorted(root.iterdir()) if d.is_dir()}
    found = {k: v for k, v in found.items() if v}
    if not found and _audio_files(root):
        found = {root.name: _audio_files(root)}
    if not found:
        raise DataError(f"{root}: no .wav or .flac recordings in it or in its sub-folders")
    return found


def plain_windows(
    path_or_folder: str | os.PathLike,
    window_s: float = 10.0,
    hop_s: float | None = None,
    sr: int = 16000,
) -> Iterator[tuple[Path, float, np.ndarray]]:
    """Cut recordings of any length into windows: yields (file, start seconds, float32 window).

    Windows start every `hop_s` (default: `window_s`, no overlap). The recording is streamed, so
    hour-long files do not sit in memory. At the end, a leftover of at least half a window is
    covered by one more window aligned to the recording's end (real audio, no padding); a
    shorter leftover is dropped. A recording shorter than one window gives one zero-padded
    window if it is at least half a window long; a shorter one raises DataError for a single
    file, and is skipped with a warning inside a folder (DataError if no file gives a window).
    """
    if not window_s > 0:
        raise DataError(f"window_s must be > 0, got {window_s!r}")
    hop_s = window_s if hop_s is None else hop_s
    if not hop_s > 0:
        raise DataError(f"hop_s must be > 0, got {hop_s!r}")
    target = Path(path_or_folder)
    if target.is_dir():
        files = _audio_files(target)
        if not files:
            raise DataError(f"{target}: no .wav or .flac recordings in this folder")
    else:
        files = [target]
    w, h = max(1, round(window_s * sr)), max(1, round(hop_s * sr))
    produced = 0
    for f in files:
        try:
            for item in _file_windows(f, w, h, sr):
                produced += 1
                yield item
        except _TooShort as exc:
            if not target.is_dir():
                raise DataError(str(exc)) from None
            log.warning("%s; skipped", exc)
    if produced == 0:
        raise DataError(
            f"{target}: no recording is at least half a window ({window_s / 2:g} s) long"
        )


class _TooShort(Exception):
    pass


def _file_windows(path: Path, w: int, h: int, sr: int) -> Iterator[tuple[Path, float, np.ndarray]]:
    buf = np.zeros(0, np.float32)
    offset = 0  # absolute sample index of buf[0]
    start = 0  # next window start
    total = 0
    for block in stream_audio(path, sr=sr, block_s=max(w, h) / sr):
        buf = np.concatenate([buf, block])
        total += block.size
        while start + w <= total:
            yield path, start / sr, buf[start - offset : start - offset + w].copy()
            start += h
        keep_from = min(start, total - w)  # keep a window's worth for the end-aligned tail
        if keep_from > offset:
            buf, offset = buf[keep_from - offset :], keep_from
    if total < w:
        if 2 * total < w:
            raise _TooShort(
                f"{path}: {total / sr:.2f} s is shorter than half a window ({w / sr / 2:g} s)"
            )
        out = np.zeros(w, np.float32)
        out[:total] = buf[:total]  # nothing was dropped: no full window fitted
        yield path, 0.0, out
    elif 2 * (total - start) >= w and total - w > start - h:  # tail not yet covered
        yield path, (total - w) / sr, buf[total - w - offset :].copy()


def _as_path(c: ClipInfo | str | os.PathLike) -> Path:
    return c.path if isinstance(c, ClipInfo) else Path(c)


def load_clips(
    clips: Sequence[ClipInfo | str | os.PathLike],
    sr: int = 16000,
    seconds: float | None = None,
    workers: int = 1,
) -> np.ndarray:
    """Load many clips into one float32 array [N, samples], padded/cropped to one length.

    The length is `seconds`, or (None) the most common clip length (ties: the longest). Shorter
    clips are padded with zeros at the end, longer ones keep their start. Threads, because
    libsndfile and soxr release the GIL: near-linear speed-up on file-bound loads.
    """
    paths = [_as_path(c) for c in clips]
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers!r}")
    if seconds is not None and not seconds > 0:
        raise DataError(f"seconds must be > 0, got {seconds!r}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if seconds is None:
            if not paths:
                return np.zeros((0, 0), np.float32)
            infos = list(pool.map(audio_info, paths))
            counts = Counter(round(i.frames * sr / i.sample_rate) for i in infos)
            top = max(counts.values())
            n = max(length for length, c in counts.items() if c == top)  # ties: the longest
        else:
            n = round(seconds * sr)
        out = np.zeros((len(paths), n), np.float32)

        def fill(i: int) -> None:
            x = load_audio(paths[i], sr=sr)
            m = min(n, x.size)
            out[i, :m] = x[:m]

        list(pool.map(fill, range(len(paths))))
    return out
