"""Wall time of `sonitor evaluate` (default recipe) on 170 real 10 s training and 200 test clips.

    python benchmarks/bench_real_timing.py [--out bench-out/real] [--recipe auto]

The folder is assembled from the real recordings in `../shared/data` (DCASE 2020 MIMII ID 00 and
the DCASE 2023 samples, 10 s clips only), linked under DCASE 2023 names and cycled to reach 170 +
200 clips. Clips repeat, so the AUCs it prints mean nothing: this measures time only.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def ten_second_clips(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.wav") if abs(sf.info(p).duration - 10.0) < 1e-3)


def build(out: Path, n_train: int = 170, n_test_per_group: int = 50) -> Path:
    root = out / "data" / "mimii_fan"
    if root.exists():
        return out / "data"
    pool = ten_second_clips(SHARED / "dcase2020_dev_id00") + ten_second_clips(
        SHARED / "dcase2023_dev_sample"
    )
    if not pool:
        sys.exit(f"no real 10 s clips under {SHARED}")
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir(parents=True)
    cyc = itertools.cycle(pool)
    for i in range(n_train):
        dom = "target" if i >= n_train - 10 else "source"
        os.symlink(next(cyc), root / "train" / f"section_00_{dom}_train_normal_{i:04d}.wav")
    n = 0
    for dom, lab in itertools.product(("source", "target"), ("normal", "anomaly")):
        for _ in range(n_test_per_group):
            os.symlink(next(cyc), root / "test" / f"section_00_{dom}_test_{lab}_{n:04d}.wav")
            n += 1
    return out / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-out/real")
    ap.add_argument("--recipe", default="auto")
    args = ap.parse_args()
    out = Path(args.out)
    data = build(out)
    cmd = [
        "sonitor",
        "evaluate",
        str(data),
        "--recipe",
        args.recipe,
        "--out",
        str(out / "eval"),
        "--quiet",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(
        f"wall time for {' '.join(cmd)}: {time.perf_counter() - t0:.1f} s on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
