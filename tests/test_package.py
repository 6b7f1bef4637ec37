"""The model package format: load, every validation error, archive form, atomic writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from package_fixtures import copy_package, make_tiny_package

from monitor.errors import PackageError
from monitor.model import package as pk
from monitor.model.package import ModelPackage, PackageWriter


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("base") / "pkg")


@pytest.fixture
def pkg_dir(base, tmp_path) -> Path:
    return copy_package(base, tmp_path / "pkg")


def _edit_manifest(pkg: Path, fn) -> None:
    m = json.loads((pkg / "manifest.json").read_text())
    fn(m)
    (pkg / "manifest.json").write_text(json.dumps(m))


# ----------------------------------------------------------------------------- loading


def test_load_exposes_what_the_daemon_needs(base):
    pkg = ModelPackage.load(base)
    assert pkg.sample_rate == 16000
    assert pkg.window_seconds == 2.0 and pkg.hop_seconds == 0.5
    assert pkg.embedding_dim == 192 and pkg.recipe == "stage1"
    assert re.fullmatch(r"[0-9a-f]{12}", pkg.model_version)
    assert pkg.machines == ["fan", "pump"]
    assert pkg.encoder_path.name == "encoder.onnx" and pkg.encoder_path.is_file()
    assert pkg.frontend_file().is_file() and pkg.backbone_file().is_file()
    assert pkg.separator_path is None
    fan = pkg.machine("fan")
    assert fan.threshold > 0 and fan.bank.embeddings.shape == (64, 192)
    # the scorer scores the bank's own members below the threshold mostly (LOO calibration)
    assert np.mean(fan.score(fan.bank.embeddings) < fan.threshold) > 0.5
    m = pkg.manifest.to_dict()
    for key in ("format_version", "created", "training_data", "files", "recipe", "frontend"):
        assert key in m
    assert all(len(v["sha256"]) == 64 for v in m["files"].values())
    # the version is the manifest's hash: stable across loads
    assert ModelPackage.load(base).model_version == pkg.model_version


def test_manifest_is_typed_and_round_trips(base):
    """`Manifest.to_dict` writes back exactly the JSON `Manifest.from_dict` read."""
    raw = json.loads((base / "manifest.json").read_text())
    m = pk.Manifest.load(base)
    assert m.to_dict() == raw and pk.Manifest.from_dict(raw) == m
    assert m.encoder.full == "encoder.onnx" and m.frontend.hop_length == 160
    assert m.machines["fan"].bank == "machines/fan/bank.npz" and m.machines["fan"].history
    assert m.files["encoder.onnx"].sha256 == raw["files"]["encoder.onnx"]["sha256"]
    assert m.digest == ModelPackage.load(base).manifest.digest
    assert ModelPackage.load(base).model_version == m.digest[:12]


def test_manifest_keeps_keys_it_does_not_know(base):
    raw = json.loads((base / "manifest.json").read_text())
    raw["from_a_newer_writer"] = {"x": 1}
    raw["encoder"]["future"] = [1, 2]
    raw["machines"]["fan"]["note"] = "kept"
    assert pk.Manifest.from_dict(raw).to_dict() == raw


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["machines"]["fan"].pop("bank"), r"machines\['fan'\]: missing key 'bank'"),
        (lambda m: m["frontend"].__setitem__("n_mels", 0), "frontend.n_mels must be positive"),
        (lambda m: m["files"].pop("encoder.onnx"), "encoder.full = 'encoder.onnx' is not listed"),
        (lambda m: m["machines"]["fan"].__setitem__("history", {}), "'history' must be a list"),
    ],
)
def test_manifest_errors_name_the_file_and_key(base, edit, message):
    raw = json.loads((base / "manifest.json").read_text())
    edit(raw)
    with pytest.raises(PackageError, match=r"^somewhere/manifest\.json: .*" + message):
        pk.Manifest.from_dict(raw, "somewhere/manifest.json")


def test_writer_refuses_a_manifest_that_would_not_load(base, tmp_path):
    """A machine whose files were never staged: nothing is swapped in."""
    m = pk.Manifest.load(base)
    with pytest.raises(PackageError, match="is not listed"), PackageWriter(tmp_path / "p") as w:
        w.add_file("encoder.onnx", base / "encoder.onnx")
        w.commit(m)
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p.staging-*"))


def test_missing_package_and_manifest(tmp_path):
    with pytest.raises(PackageError, match="not found"):
        ModelPackage.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match=r"manifest\.json: missing"):
        ModelPackage.load(tmp_path / "empty")


def test_manifest_not_json(pkg_dir):
    (pkg_dir / "manifest.json").write_text("{ not json")
    with pytest.raises(PackageError, match=r"manifest\.json: not valid JSON"):
        ModelPackage.load(pkg_dir)


@pytest.mark.parametrize("version", [2, 0, "1", None, True])
def test_unknown_format_version(pkg_dir, version):
    _edit_manifest(pkg_dir, lambda m: m.__setitem__("format_version", version))
    with pytest.raises(PackageError, match=rf"unknown format_version {re.escape(repr(version))}"):
        ModelPackage.load(pkg_dir)


def test_wrong_format_name(pkg_dir):
    _edit_manifest(pkg_dir, lambda m: m.__setitem__("format", "something-else"))
    with pytest.raises(PackageError, match="'format' is 'something-else'"):
        ModelPackage.load(pkg_dir)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("window_seconds", -1, "'window_seconds' must be a positive number"),
        ("hop_seconds", "1", "'hop_seconds' has the wrong type"),
        ("sample_rate", 0, "'sample_rate' must be positive"),
        ("embedding_dim", None, "'embedding_dim' has the wrong type"),
        ("recipe", 3, "'recipe' has the wrong type"),
        ("hop_seconds", 0.3333, "hop_seconds = 0.3333 (5333 samples) is not a multiple"),
    ],
)
def test_bad_manifest_values_name_the_key(pkg_dir, key, value, message):
    _edit_manifest(pkg_dir, lambda m: m.__setitem__(key, value))
    with pytest.raises(PackageError, match=re.escape(message)):
        ModelPackage.load(pkg_dir)


def test_missing_key_is_named(pkg_dir):
    _edit_manifest(pkg_dir, lambda m: m.pop("embedding_dim"))
    with pytest.raises(PackageError, match="missing key 'embedding_dim'"):
        ModelPackage.load(pkg_dir)


def test_missing_file(pkg_dir):
    (pkg_dir / "machines" / "pump" / "bank.npz").unlink()
    with pytest.raises(PackageError, match=r"machines/pump/bank\.npz: file listed in the manifest"):
        ModelPackage.load(pkg_dir)


def test_checksum_mismatch(pkg_dir):
    path = pkg_dir / "encoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"encoder\.onnx: checksum mismatch"):
        ModelPackage.load(pkg_dir)


def test_truncated_file(pkg_dir):
    path = pkg_dir / "machines" / "fan" / "calibration.json"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(PackageError, match=r"fan/calibration\.json: size \d+ bytes"):
        ModelPackage.load(pkg_dir)


def test_unlisted_reference_and_unsafe_paths(pkg_dir):
    _edit_manifest(pkg_dir, lambda m: m["encoder"].__setitem__("full", "other.onnx"))
    with pytest.raises(PackageError, match="encoder.full = 'other.onnx' is not listed"):
        ModelPackage.load(pkg_dir)
    _edit_manifest(pkg_dir, lambda m: m["encoder"].__setitem__("full", "../../etc/passwd"))
    with pytest.raises(PackageError, match="unsafe file path"):
        ModelPackage.load(pkg_dir)


def test_wrong_embedding_size_in_manifest(pkg_dir):
    _edit_manifest(pkg_dir, lambda m: m.__setitem__("embedding_dim", 100))
    with pytest.raises(
        PackageError, match=r"bank\.npz \(machine 'fan'\): wrong embedding size 192"
    ):
        ModelPackage.load(pkg_dir)


def test_wrong_embedding_size_of_the_encoder(pkg_dir, tmp_path):
    """Banks and manifest agree on 100-d, but the ONNX encoder gives 192-d embeddings."""
    from monitor.model.scoring import scorer_by_name

    x = np.random.default_rng(0).standard_normal((20, 100)).astype(np.float32)
    scorer = scorer_by_name("knn").fit(x)
    writer = PackageWriter(tmp_path / "bad")
    m = json.loads((pkg_dir / "manifest.json").read_text())
    for rel in m.pop("files"):
        if "machines/" not in rel:
            writer.add_file(rel, pkg_dir / rel)
    pk.save_bank(writer.path("machines/fan/bank.npz"), x, None, "knn", {}, scorer, np.ones(20))
    writer.write_json(
        "machines/fan/calibration.json",
        json.loads((pkg_dir / "machines/fan/calibration.json").read_text()),
    )
    m["embedding_dim"] = 100
    m["machines"] = {
        "fan": {"bank": "machines/fan/bank.npz", "calibration": "machines/fan/calibration.json"}
    }
    writer.commit(m)
    with pytest.raises(
        PackageError, match=r"encoder\.onnx: wrong embedding size: the graph outputs"
    ):
        ModelPackage.load(tmp_path / "bad")
    ModelPackage.load(tmp_path / "bad", check_encoder=False)  # everything else is consistent


def test_machine_not_in_package(base):
    pkg = ModelPackage.load(base)
    with pytest.raises(
        PackageError,
        match=r"machine 'valve' is not in this package \(machines: "
        r"fan, pump\)",
    ):
        pkg.machine("valve")


def test_bank_with_pickled_objects_is_refused(pkg_dir):
    bank = pkg_dir / "machines" / "fan" / "bank.npz"
    with np.load(bank, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["embeddings"] = np.array([{"evil": 1}], dtype=object)
    with open(bank, "wb") as f:
        np.savez(f, **arrays)
    _refresh_checksums(pkg_dir)
    with pytest.raises(PackageError, match=r"fan/bank\.npz.*not a readable pickle-free"):
        ModelPackage.load(pkg_dir)


def test_bad_calibration_and_bank_arrays(pkg_dir):
    cal = pkg_dir / "machines" / "pump" / "calibration.json"
    cal.write_text('{"method": "gamma", "q": 0.9}')
    _refresh_checksums(pkg_dir)
    with pytest.raises(PackageError, match=r"pump/calibration\.json: not a threshold calibration"):
        ModelPackage.load(pkg_dir)
    cal.write_text("[1, 2")
    _refresh_checksums(pkg_dir)
    with pytest.raises(PackageError, match=r"pump/calibration\.json: not valid JSON"):
        ModelPackage.load(pkg_dir)


def test_bank_missing_array(pkg_dir):
    bank = pkg_dir / "machines" / "fan" / "bank.npz"
    with np.load(bank, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "domains"}
    with open(bank, "wb") as f:
        np.savez(f, **arrays)
    _refresh_checksums(pkg_dir)
    with pytest.raises(PackageError, match="bank lacks the array 'domains'"):
        ModelPackage.load(pkg_dir)


def _link_out(pkg: Path, rel: str, outside: Path) -> None:
    """Move ``rel`` (a file or folder) out of the package and leave a symlink in its place."""
    shutil.move(pkg / rel, outside)
    (pkg / rel).symlink_to(outside)


@pytest.mark.parametrize(
    "rel", ["machines/fan/bank.npz", "machines/pump", "encoder.onnx", "manifest.json"]
)
def test_symlinks_are_refused(pkg_dir, tmp_path, rel):
    """Identical bytes behind the link (checksums pass): the link itself is refused."""
    _link_out(pkg_dir, rel, tmp_path / "outside")
    with pytest.raises(PackageError, match=rf"{re.escape(rel)}: is a symbolic link"):
        ModelPackage.load(pkg_dir)


def test_calibration_linked_to_a_system_file_is_never_read(pkg_dir):
    cal = pkg_dir / "machines" / "fan" / "calibration.json"
    cal.unlink()
    cal.symlink_to("/etc/passwd")
    _refresh_checksums(pkg_dir)  # the manifest even vouches for it
    with pytest.raises(PackageError, match=r"fan/calibration\.json: is a symbolic link"):
        ModelPackage.load(pkg_dir, verify_checksums=False)


def test_a_linked_package_folder_is_fine(base, tmp_path):
    (tmp_path / "current").symlink_to(base)
    assert ModelPackage.load(tmp_path / "current").machines == ["fan", "pump"]


def _refresh_checksums(pkg: Path) -> None:
    """Re-sign the files after a deliberate edit, so the check under test is not the checksum."""

    def fix(m):
        for rel in m["files"]:
            m["files"][rel] = {
                "sha256": pk.sha256_file(pkg / rel),
                "bytes": (pkg / rel).stat().st_size,
            }

    _edit_manifest(pkg, fix)


# ----------------------------------------------------------------------------- archive form


def test_archive_round_trip(base, tmp_path):
    archive = pk.pack_archive(base, tmp_path / "pkg.tar")
    pkg = ModelPackage.load(archive)
    assert pkg.archive == archive
    assert pkg.model_version == ModelPackage.load(base).model_version
    extracted = pkg.path
    assert extracted.is_dir() and extracted != base
    assert pkg.machine("pump").threshold == ModelPackage.load(base).machine("pump").threshold
    del pkg
    import gc

    gc.collect()
    assert not extracted.exists()  # the temporary extraction goes with the object


def test_archive_with_unsafe_members_is_refused(tmp_path):
    bad = tmp_path / "bad.tar"
    (tmp_path / "x").write_text("x")
    with tarfile.open(bad, "w") as tar:
        tar.add(tmp_path / "x", arcname="../escape.txt")
    with pytest.raises(PackageError, match="unsafe file path '../escape.txt'"):
        ModelPackage.load(bad)
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(PackageError, match="is not a regular file"):
        ModelPackage.load(link)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"definitely not a tar file" * 40)
    with pytest.raises(PackageError, match="not a package directory or a readable tar"):
        ModelPackage.load(junk)


# ----------------------------------------------------------------------------- atomic writes


def _rewrite(pkg_dir: Path, marker: str, before_swap=None) -> None:
    """Rewrite the package with one changed field (a complete new version)."""
    old = ModelPackage.load(pkg_dir, check_encoder=False)
    m = old.manifest.to_dict()
    files = m.pop("files")
    m["training_data"] = {"marker": marker}
    with PackageWriter(pkg_dir) as w:
        for rel in files:
            w.add_file(rel, pkg_dir / rel)
        w.commit(m, before_swap=before_swap)


def test_rewrite_swaps_in_a_new_version(pkg_dir):
    v0 = ModelPackage.load(pkg_dir).model_version
    _rewrite(pkg_dir, "v1")
    new = ModelPackage.load(pkg_dir)
    assert new.manifest.training_data == {"marker": "v1"} and new.model_version != v0
    assert not list(pkg_dir.parent.glob(".pkg.*"))  # no staging or backup left behind


def test_failure_before_the_swap_keeps_the_old_package(pkg_dir):
    v0 = ModelPackage.load(pkg_dir).model_version

    def boom(stage):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _rewrite(pkg_dir, "v1", before_swap=boom)
    assert ModelPackage.load(pkg_dir).model_version == v0
    assert not list(pkg_dir.parent.glob(".pkg.staging-*"))  # the context manager cleaned up


def test_kill_during_write_leaves_the_old_package(pkg_dir, tmp_path):
    """SIGKILL a writer after it staged the new version, before the swap."""
    v0 = ModelPackage.load(pkg_dir).model_version
    script = tmp_path / "writer.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_package import _rewrite
        from pathlib import Path

        def pause(stage):
            print("STAGED", stage, flush=True)
            time.sleep(60)

        _rewrite(Path(sys.argv[1]), "v1", before_swap=pause)
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pkg_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("STAGED"), line
        proc.kill()
    finally:
        proc.wait(10)
    stage = Path(line.split()[1])
    assert stage.is_dir() and (stage / "manifest.json").is_file()  # the complete new version
    assert ModelPackage.load(pkg_dir).model_version == v0  # ... was never swapped in
    _rewrite(pkg_dir, "v2")  # the next write cleans the stale stage up
    assert not stage.exists()
    assert ModelPackage.load(pkg_dir).manifest.training_data == {"marker": "v2"}


def test_fallback_swap_without_renameat2(pkg_dir, monkeypatch):
    """Where RENAME_EXCHANGE is unsupported: two renames, and recovery if killed in between."""
    monkeypatch.setattr(pk.writer, "_exchange", lambda a, b: False)
    _rewrite(pkg_dir, "v1")
    assert ModelPackage.load(pkg_dir).manifest.training_data == {"marker": "v1"}
    # simulate a crash between the fallback's two renames: only the moved-aside copy exists
    backup = pkg_dir.parent / f".{pkg_dir.name}.old-deadbeef"
    os.rename(pkg_dir, backup)
    with pytest.raises(PackageError, match="interrupted write left the previous version"):
        ModelPackage.load(pkg_dir)
    pk.recover_interrupted(pkg_dir)
    assert ModelPackage.load(pkg_dir).manifest.training_data == {"marker": "v1"}
    assert not backup.exists()


def test_writer_rejects_unsafe_names(tmp_path):
    w = PackageWriter(tmp_path / "p")
    with pytest.raises(PackageError, match="unsafe file path"):
        w.path("../x")
    w.abort()
    assert not list(tmp_path.glob(".p.staging-*"))


@pytest.mark.parametrize("name", ["", "a/b", "../x", "x y", "-lead", "a" * 65])
def test_machine_names_are_checked(name):
    with pytest.raises(PackageError, match="invalid machine name"):
        pk.validate_machine_name(name)


def test_no_torch_in_runtime_modules():
    monitor = Path(pk.__file__).parents[2]
    files = [*(monitor / "model" / "package").glob("*.py"), monitor / "model" / "runtime.py"]
    files += [monitor / "model" / "enroll.py", monitor / "cli" / "package.py"]
    src = "\n".join(f.read_text() for f in files)
    assert not re.search(r"^\s*(import|from)\s+(torch|training|export)\b", src, re.M)


def test_copy_is_independent(base, tmp_path):
    p = copy_package(base, tmp_path / "c")
    assert not os.path.samefile(p / "encoder.onnx", base / "encoder.onnx")
    shutil.rmtree(p)


def test_never_replaces_a_folder_that_is_not_a_package(tmp_path):
    """`sonitor export --out ~/Documents` must not delete Documents."""
    victim = tmp_path / "Documents"
    victim.mkdir()
    (victim / "thesis.txt").write_text("precious")
    with pytest.raises(PackageError, match="exists and is not a sonitor model package"):
        PackageWriter(victim)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PackageError, match="is not a sonitor model package"):
        PackageWriter(tmp_path / "file")
    assert (victim / "thesis.txt").read_text() == "precious"
    assert not list(tmp_path.glob(".*staging*"))


def test_archive_never_overwrites_other_files(base, tmp_path):
    other = tmp_path / "notes.tar"
    other.write_text("not an archive")
    with pytest.raises(PackageError, match="refusing to overwrite"):
        pk.pack_archive(base, other)
    assert other.read_text() == "not an archive"
    good = pk.pack_archive(base, tmp_path / "p.tar")
    assert pk.pack_archive(base, good) == good  # an older package archive is replaced
