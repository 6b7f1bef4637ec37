"""training.data: DCASE 2020-2025 names and layouts, attributes CSVs, plain windows, loading."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitor.errors import AudioError, DataError
from training.data import (
    ClipInfo,
    discover,
    discover_plain,
    load_clips,
    parse_clip_name,
    plain_windows,
    read_attributes_csv,
    supplemental_kind,
)

SR = 16000
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real DCASE sample clips not present at {SHARED}"
)


def wav(path: Path, seconds: float = 0.1, sr: int = SR, value: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(int(round(seconds * sr)), value), sr, subtype="PCM_16")
    return path


# ---------------------------------------------------------------- real clips


@needs_shared
@pytest.mark.realdata
def test_every_real_dcase2023_clip_parses_to_what_its_name_says():
    files = sorted((SHARED / "dcase2023_dev_sample").rglob("*.wav"))
    assert len(files) == 28
    pattern = re.compile(
        r"section_(\d+)_(source|target)_(train|test)_(normal|anomaly)_(\d+)_(.+)\.wav"
    )
    for f in files:
        c = parse_clip_name(f)
        section, domain, split, label, index, attrs = pattern.fullmatch(f.name).groups()
        assert (c.section, c.domain, c.split, c.label, c.index) == (
            section,
            domain,
            split,
            label,
            index,
        )
        assert c.machine == f.parent.parent.name and c.split == f.parent.name
        assert "_".join(f"{k}_{v}" for k, v in c.attributes.items()) == attrs
        assert c.machine_id is None and c.path == f


@needs_shared
@pytest.mark.realdata
def test_every_real_dcase2020_clip_parses():
    files = sorted((SHARED / "dcase2020_dev_id00").rglob("*.wav"))
    assert len(files) == 76
    for f in files:
        c = parse_clip_name(f)
        assert c.label == f.name.split("_")[0] and c.machine_id == "id_00"
        assert c.split == f.parent.name and c.machine == "dcase2020_dev_id00"
        assert c.section is None and c.domain is None and c.index == f.stem.split("_")[-1]
    pair = sorted((SHARED / "dcase2020_pump_pair").glob("*.wav"))
    with pytest.raises(DataError, match="cannot tell whether"):
        parse_clip_name(pair[0])  # flat folder, 2020 name: the split is unknowable
    parsed = [parse_clip_name(f, machine="pump", split="test") for f in pair]
    assert [(c.label, c.machine_id, c.index) for c in parsed] == [
        ("anomaly", "id_06", "00000100"),
        ("normal", "id_06", "00000933"),
    ]


@needs_shared
@pytest.mark.realdata
def test_discover_real_folders():
    found = discover(SHARED / "dcase2023_dev_sample")
    assert list(found) == ["ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve"]
    for m, md in found.items():
        assert md.machine == m and len(md.train) == 2 and len(md.test) == 2
        assert md.supplemental == [] and supplemental_kind(md.supplemental) is None
        assert all(c.split == "train" and c.label == "normal" for c in md.train)
    one = discover(SHARED / "dcase2020_dev_id00")  # the root is itself a machine folder
    assert list(one) == ["dcase2020_dev_id00"]
    assert len(one["dcase2020_dev_id00"].train) == 75
    assert [c.label for c in one["dcase2020_dev_id00"].test] == ["anomaly"]
    with pytest.raises(DataError, match="no DCASE clips found") as exc:
        discover(SHARED / "dcase2020_pump_pair")
    assert "dcase2020_pump_pair" in str(exc.value)


# ---------------------------------------------------------------- hand-written names

CASES = [
    # name, folder, expected (section, domain, split, label, index, attributes, machine_id)
    (
        "section_00_source_train_normal_0001_car_A1_spd_28V_mic_1_noise_1.wav",
        "train",
        (
            "00",
            "source",
            "train",
            "normal",
            "0001",
            {"car": "A1", "spd": "28V", "mic": "1", "noise": "1"},
            None,
        ),
    ),
    (
        "section_00_target_test_anomaly_0012.wav",
        "test",
        ("00", "target", "test", "anomaly", "0012", {}, None),
    ),
    (
        "section_00_source_train_normal_0765_noAttribute.wav",
        "train",
        ("00", "source", "train", "normal", "0765", {}, None),
    ),
    (
        "section_00_source_test_normal_0027_vel_730_ac_0.11.wav",
        "test",
        ("00", "source", "test", "normal", "0027", {"vel": "730", "ac": "0.11"}, None),
    ),
    (
        "section_00_source_train_normal_0000_.wav",
        "train",
        ("00", "source", "train", "normal", "0000", {}, None),
    ),
    (
        "section_01_source_test_normal_0000.wav",
        "source_test",
        ("01", "source", "test", "normal", "0000", {}, None),
    ),
    (
        "section_02_target_test_anomaly_0003.wav",
        "target_test",
        ("02", "target", "test", "anomaly", "0003", {}, None),
    ),
    ("section_00_0000.wav", "test", ("00", None, "test", None, "0000", {}, None)),
    ("section_03_test_0199.wav", "test", ("03", None, "test", None, "0199", {}, None)),
    ("section_00_source_test_0004.wav", "test", ("00", "source", "test", None, "0004", {}, None)),
    (
        "normal_id_00_00000000.wav",
        "train",
        (None, None, "train", "normal", "00000000", {}, "id_00"),
    ),
    (
        "anomaly_id_06_00000100.wav",
        "test",
        (None, None, "test", "anomaly", "00000100", {}, "id_06"),
    ),
    ("id_05_00000007.wav", "test", (None, None, "test", None, "00000007", {}, "id_05")),
    # DCASE 2025 supplemental: clean machine sound / noise only
    (
        "section_00_machine_source_0000_noAttribute.wav",
        "supplemental",
        ("00", "source", "supplemental", "normal", "0000", {}, None),
    ),
    (
        "section_00_source_supplemental_machine_0004_m-n_W.wav",
        "supplemental",
        ("00", "source", "supplemental", "normal", "0004", {"m-n": "W"}, None),
    ),
    (
        "section_00_noise_supplemental_normal_0000.wav",
        "supplemental",
        ("00", None, "supplemental", "normal", "0000", {}, None),
    ),
    (
        "section_00_noise_target_0001_noise_pink.wav",
        "supplemental",
        ("00", "target", "supplemental", None, "0001", {"noise": "pink"}, None),
    ),
    (
        "section_00_machine_0001_.wav",
        "supplemental",
        ("00", None, "supplemental", "normal", "0001", {}, None),
    ),
]


@pytest.mark.parametrize(("name", "folder", "expected"), CASES)
def test_hand_written_names(tmp_path: Path, name: str, folder: str, expected):
    path = tmp_path / "fan" / folder / name
    c = parse_clip_name(path)
    assert (c.section, c.domain, c.split, c.label, c.index, c.attributes, c.machine_id) == expected
    assert c.machine == "fan" and c.path == path


def test_machine_and_split_arguments_override_folders():
    c = parse_clip_name("/x/whatever/section_00_source_train_normal_0001_a_1.wav")
    assert (c.machine, c.split) == ("whatever", "train")  # split from the name
    c = parse_clip_name("/x/m/train/section_00_0001.wav", machine="pump", split="test")
    assert (c.machine, c.split) == ("pump", "test")
    c = parse_clip_name("/x/m/test/section_00_machine_source_0001.wav")
    assert c.split == "test"  # the folder wins over the name
    with pytest.raises(DataError, match="unknown split 'dev'"):
        parse_clip_name("/x/m/train/section_00_0001.wav", split="dev")


def test_odd_attribute_token_is_kept():
    c = parse_clip_name("/x/m/train/section_00_source_train_normal_0001_a_1_lonely.wav")
    assert c.attributes == {"a": "1", "lonely": ""}


@pytest.mark.parametrize(
    "name",
    [
        "foo.wav",
        "section_00_foo_0001.wav",
        "section_00_source_source_train_0001.wav",
        "section_xx_source_train_normal_0001.wav",
        "section_00_source_train_normal.wav",
        "normal_id_xx_0001.wav",
        "normal_00000000.wav",
    ],
)
def test_unrecognised_names_raise_data_error_naming_the_file(name: str):
    with pytest.raises(DataError, match="not recognised") as exc:
        parse_clip_name(Path("/data/fan/train") / name)
    assert name in str(exc.value)


def test_clip_info_is_frozen_and_hashable():
    c = parse_clip_name("/x/fan/train/section_00_source_train_normal_0001_a_1.wav")
    with pytest.raises(AttributeError):
        c.label = "anomaly"  # type: ignore[misc]
    assert len({c, parse_clip_name(c.path)}) == 1


# ---------------------------------------------------------------- layouts and attributes


def test_attributes_csv_is_merged_and_names_win(tmp_path: Path):
    root = tmp_path / "data"
    a = wav(root / "fan" / "train" / "section_00_source_train_normal_0000_noAttribute.wav")
    b = wav(root / "fan" / "test" / "section_00_source_test_normal_0001_m-n_X.wav")
    c = wav(root / "fan" / "test" / "section_00_0002.wav")
    (root / "fan" / "attributes_00.csv").write_text(
        "file_name,d1p,d1v,d2p,d2v\n"
        f"fan/train/{a.name},m-n,W,spd,30\n"
        f"{b.stem},m-n,Y,,\n"  # no folder, no suffix (ToyCar style); name's X wins
        f"fan/test/{c.name},noAttribute,,,\n"
    )
    md = discover(root)["fan"]
    assert md.train[0].attributes == {"m-n": "W", "spd": "30"}
    by_name = {x.path.name: x for x in md.test}
    assert by_name[b.name].attributes == {"m-n": "X"}
    assert by_name[c.name].attributes == {}
    assert read_attributes_csv(root / "fan" / "attributes_00.csv")[b.stem] == {"m-n": "Y"}


def test_bad_attributes_csv_names_the_file(tmp_path: Path):
    wav(tmp_path / "fan" / "train" / "section_00_source_train_normal_0000_a_1.wav")
    bad = tmp_path / "fan" / "attributes_00.csv"
    bad.write_text("name;value\nx;1\n")
    with pytest.raises(DataError, match="file_name") as exc:
        discover(tmp_path)
    assert str(bad) in str(exc.value)


def test_discover_layouts(tmp_path: Path):
    r = tmp_path / "r"
    wav(r / "valve" / "train" / "section_00_source_train_normal_0001_pat_00.wav")
    wav(r / "valve" / "train" / "section_00_source_train_normal_0000_pat_00.wav")
    wav(r / "valve" / "source_test" / "section_00_source_test_anomaly_0000.wav")
    wav(r / "valve" / "target_test" / "section_00_target_test_normal_0000.wav")
    wav(r / "ToyCar" / "test" / "section_00_0000.wav")
    wav(r / "ToyCar" / "test_rename" / "section_00_source_test_normal_0000_car_A1.wav")
    wav(r / "ToyCar" / "supplemental" / "section_00_noise_source_0000_noAttribute.wav")
    wav(r / "ToyCar" / "supplemental" / "._section_00_noise_source_0001.wav")  # macOS junk
    (r / "ToyCar" / "train").mkdir()
    (r / "notes").mkdir()
    (r / "README.txt").write_text("hi")
    found = discover(r)
    assert list(found) == ["ToyCar", "valve"]
    v = found["valve"]
    assert [c.index for c in v.train] == ["0000", "0001"]  # sorted
    assert [(c.domain, c.label) for c in v.test] == [("source", "anomaly"), ("target", "normal")]
    t = found["ToyCar"]
    assert [c.label for c in t.test] == ["normal"]  # test_rename replaces the anonymised test/
    assert len(t.supplemental) == 1 and supplemental_kind(t.supplemental) == "noise"
    assert discover(r / "valve").keys() == {"valve"}


@pytest.mark.parametrize("make", ["missing", "empty", "no_wavs", "file"])
def test_discover_without_clips_names_the_folder(tmp_path: Path, make: str):
    root = tmp_path / "root"
    if make == "empty":
        root.mkdir()
    elif make == "no_wavs":
        (root / "fan" / "train").mkdir(parents=True)
        (root / "fan" / "train" / "notes.txt").write_text("x")
    elif make == "file":
        root.write_text("x")
    with pytest.raises(DataError) as exc:
        discover(root)
    assert str(root) in str(exc.value)


def test_discover_names_an_unparseable_clip(tmp_path: Path):
    bad = wav(tmp_path / "fan" / "train" / "recording_monday.wav")
    with pytest.raises(DataError, match="not recognised") as exc:
        discover(tmp_path)
    assert str(bad) in str(exc.value)


def test_supplemental_kind():
    def clips(*names: str) -> list[ClipInfo]:
        return [parse_clip_name(f"/d/m/supplemental/{n}") for n in names]

    clean = "section_00_machine_source_0000_noAttribute.wav"
    noise = "section_00_noise_source_0001_noAttribute.wav"
    unstated = "section_00_source_supplemental_normal_0002.wav"
    assert supplemental_kind(clips(clean, clean.replace("0000", "0003"))) == "clean"
    assert supplemental_kind(clips(noise)) == "noise"
    assert supplemental_kind(clips(clean, noise)) == "mixed"
    assert supplemental_kind(clips(unstated, noise)) == "noise"
    assert supplemental_kind(clips(unstated)) is None
    assert supplemental_kind([]) is None
    # the kind is read before the index: a ToyCar attribute "noise_1" does not count
    toy = parse_clip_name("/d/m/train/section_00_source_train_normal_0001_car_A1_noise_1.wav")
    assert supplemental_kind([toy]) is None


# ---------------------------------------------------------------- plain mode


def test_plain_windows_counts_and_starts(tmp_path: Path):
    folder = tmp_path / "press"
    for name, seconds in [("a", 2.5), ("b", 2.6), ("c", 0.7), ("d", 0.3), ("e", 1.0)]:
        wav(folder / f"{name}.wav", seconds, value=0.2)
    got = [(p.name, round(start, 4), w.size) for p, start, w in plain_windows(folder, 1.0)]
    assert got == [
        ("a.wav", 0.0, SR),
        ("a.wav", 1.0, SR),
        ("a.wav", 1.5, SR),  # 0.5 s tail: end-aligned
        ("b.wav", 0.0, SR),
        ("b.wav", 1.0, SR),
        ("b.wav", 1.6, SR),
        ("c.wav", 0.0, SR),  # 0.7 s: one zero-padded window; d (0.3 s) skipped
        ("e.wav", 0.0, SR),
    ]
    _, _, padded = next(w for w in plain_windows(folder / "c.wav", 1.0))
    assert np.all(padded[: int(0.7 * SR) - 1] > 0.19) and np.all(padded[int(0.7 * SR) :] == 0)
    hop = [s for _, s, _ in plain_windows(folder / "a.wav", 1.0, hop_s=0.5)]
    assert hop == [0.0, 0.5, 1.0, 1.5]
    short_tail = [s for _, s, _ in plain_windows(folder / "a.wav", 1.0, hop_s=0.75)]
    assert short_tail == [0.0, 0.75, 1.5]  # leftover 0.25 s after 1.5 s is dropped


def test_plain_windows_contents_follow_the_recording(tmp_path: Path):
    x = np.arange(int(2.5 * SR)) / (2.5 * SR) - 0.5
    path = tmp_path / "ramp.flac"
    sf.write(path, x, SR, subtype="PCM_24")
    for _, start, w in plain_windows(path, 1.0):
        i = int(round(start * SR))
        np.testing.assert_allclose(w, x[i : i + SR], atol=1e-4)


def test_plain_windows_errors(tmp_path: Path):
    short = wav(tmp_path / "short.wav", 0.3)
    with pytest.raises(DataError, match="shorter than half a window") as exc:
        list(plain_windows(short, 1.0))
    assert str(short) in str(exc.value)
    with pytest.raises(DataError, match="no recording is at least half a window"):
        list(plain_windows(tmp_path, 1.0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .wav or .flac"):
        list(plain_windows(tmp_path / "empty"))
    for kw in ({"window_s": 0}, {"hop_s": -1.0}):
        with pytest.raises(DataError, match="must be > 0"):
            list(plain_windows(short, **kw))


def test_discover_plain(tmp_path: Path):
    wav(tmp_path / "press" / "b.wav")
    wav(tmp_path / "press" / "a.flac")
    wav(tmp_path / "conveyor" / "x.wav")
    (tmp_path / "empty").mkdir()
    found = discover_plain(tmp_path)
    assert list(found) == ["conveyor", "press"]
    assert [p.name for p in found["press"]] == ["a.flac", "b.wav"]
    assert discover_plain(tmp_path / "press") == {"press": found["press"]}
    with pytest.raises(DataError) as exc:
        discover_plain(tmp_path / "empty")
    assert "empty" in str(exc.value)


# ---------------------------------------------------------------- loading


def test_load_clips_pads_crops_and_resamples(tmp_path: Path):
    paths = [
        wav(tmp_path / "a.wav", 0.5, value=0.1),
        wav(tmp_path / "b.wav", 0.5, value=0.2),
        wav(tmp_path / "c.wav", 0.25, value=0.3),
        wav(tmp_path / "d.wav", 1.0, value=0.4),
        wav(tmp_path / "e.wav", 0.5, sr=48000, value=0.5),
    ]
    x = load_clips(paths)
    assert x.shape == (5, SR // 2) and x.dtype == np.float32  # the most common length
    np.testing.assert_allclose(x[:, 100], [0.1, 0.2, 0.3, 0.4, 0.5], atol=2e-3)
    assert np.all(x[2, SR // 4 :] == 0)  # padded
    y = load_clips(paths, seconds=0.75, workers=3)
    assert y.shape == (5, int(0.75 * SR))
    np.testing.assert_array_equal(y[:, : SR // 2], x)
    clips = [parse_clip_name(wav(tmp_path / "m" / "train" / "section_00_0001.wav", 0.2))]
    assert load_clips(clips).shape == (1, int(0.2 * SR))
    assert load_clips([]).shape == (0, 0)
    assert load_clips([], seconds=1.0).shape == (0, SR)


def test_load_clips_tie_takes_the_longest_and_errors_name_files(tmp_path: Path):
    paths = [wav(tmp_path / "a.wav", 0.2), wav(tmp_path / "b.wav", 0.3)]
    assert load_clips(paths).shape == (2, int(0.3 * SR))
    with pytest.raises(AudioError) as exc:
        load_clips([*paths, tmp_path / "gone.wav"], workers=2)
    assert "gone.wav" in str(exc.value)
    with pytest.raises(DataError, match="workers"):
        load_clips(paths, workers=0)
