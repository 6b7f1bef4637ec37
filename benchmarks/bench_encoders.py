"""Encoder cost per 10 s window: PyTorch vs onnxruntime fp32 vs int8, 1 and 2 threads.

For CED tiny and mini and the ResNet-18 (second seed), batch 1, a 10 s window (160,000 samples),
front-end included. Also the FLOPs per window (``torch.utils.flop_counter.FlopCounterMode``:
matrix multiplies and convolutions, the STFT convolution included) against this CPU's measured
float32 matrix-multiply throughput (the best of ``torch.mm`` and an onnxruntime ``MatMul``,
1024 and 2048 square, same thread count): efficiency = achieved FLOP/s / that GEMM FLOP/s.
Weights are random (timing does not depend on them).

    python benchmarks/bench_encoders.py [--repeats 7] [--models ced-tiny ced-mini resnet]
        [--out results.md]

Timings are medians after warm-up; the machine may be shared, so the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SAMPLES = 160_000  # 10 s at 16 kHz


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name.startswith("ced-"):
        from training.models.ced import CED

        return CED(name.split("-", 1)[1]).eval()
    if name == "resnet":
        from training.models.resnet import ResNetEncoder

        return ResNetEncoder().eval()
    raise SystemExit(f"unknown model {name!r}")


def timed_ms(fn, repeats: int, warmup: int) -> tuple[float, float]:
    """(median, min) wall time in ms; the min is the run least disturbed by other processes."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times), 1000.0 * min(times)


def median_ms(fn, repeats: int, warmup: int) -> float:
    return timed_ms(fn, repeats, warmup)[0]


def _ort_matmul(n: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ABC"]
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "mm", spec[:2],
                              spec[2:])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])  # fmt: skip
    return sess


def matmul_gflops(threads: int, repeats: int = 10) -> dict[str, float]:
    """Best float32 GEMM throughput we can measure: torch.mm (MKL) and onnxruntime (MLAS).

    MKL takes a slow path on AMD CPUs while MLAS does not, so the peak is the better of the two.
    """
    torch.set_num_threads(threads)
    out = {"torch": 0.0, "ort": 0.0}
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        flops = 2 * n**3 / 1e9
        out["torch"] = max(
            out["torch"], flops / median_ms(lambda a=a, b=b: torch.mm(a, b), repeats, 3) * 1e3
        )
        sess, feed = _ort_matmul(n, threads), {"A": a.numpy(), "B": b.numpy()}
        ms = median_ms(lambda s=sess, f=feed: s.run(None, f), repeats, 3)
        out["ort"] = max(out["ort"], flops / ms * 1e3)
    out["peak"] = max(out["torch"], out["ort"])
    return out


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return float(counter.get_total_flops())


def bench_model(
    name: str, repeats: int, warmup: int, tmp: Path, thread_counts: tuple[int, ...] = (1, 2)
) -> list[dict]:
    from export.onnx_export import export_encoder
    from export.quantize import quantize_encoder
    from monitor.model.runtime import Embedder

    model = build(name)
    x = (0.1 * torch.randn(1, SAMPLES)).contiguous()
    flops = count_flops(model, x)
    t0 = time.perf_counter()
    ex = export_encoder(model, tmp / name, split=False)
    q8 = quantize_encoder(ex.full, tmp / name / "encoder.int8.onnx")
    prep_s = time.perf_counter() - t0
    xn = x.numpy()
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)

        def run_torch() -> None:
            with torch.inference_mode():
                model(x)

        times, mins = {}, {}
        times["torch"], mins["torch"] = timed_ms(run_torch, repeats, warmup)
        for label, path in (("ort_fp32", ex.full), ("ort_int8", q8)):
            emb = Embedder({"encoder": path}, threads=threads)
            times[label], mins[label] = timed_ms(lambda e=emb: e.embed(xn), repeats, warmup)
        rows.append(
            {
                "model": name,
                "threads": threads,
                "gflops_per_window": flops / 1e9,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "size_mb_fp32": ex.full.stat().st_size / 1e6,
                "size_mb_int8": q8.stat().st_size / 1e6,
                "export_and_quantize_s": prep_s,
                **{f"{k}_ms": v for k, v in times.items()},
                **{f"{k}_min_ms": v for k, v in mins.items()},
            }
        )
    return rows


def markdown(rows: list[dict], peak: dict[int, dict[str, float]]) -> str:
    head = (
        "| model | threads | GFLOPs / 10 s window | torch ms (min) | ORT fp32 ms (min) | "
        "ORT int8 ms (min) | "
        "matmul GFLOP/s torch / ORT | efficiency torch / ORT fp32 | real-time factor ORT fp32 |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        mm = peak[r["threads"]]
        p = mm["peak"]
        eff = [r["gflops_per_window"] / (r[k] / 1000) / p for k in ("torch_ms", "ort_fp32_ms")]
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['gflops_per_window']:.2f} | "
            f"{r['torch_ms']:.1f} ({r['torch_min_ms']:.1f}) | "
            f"{r['ort_fp32_ms']:.1f} ({r['ort_fp32_min_ms']:.1f}) | "
            f"{r['ort_int8_ms']:.1f} ({r['ort_int8_min_ms']:.1f}) | "
            f"{mm['torch']:.0f} / {mm['ort']:.0f} | "
            f"{eff[0]:.2f} / {eff[1]:.2f} | {10000 / r['ort_fp32_ms']:.0f}x |"
        )
    return head + "\n".join(lines)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["ced-tiny", "ced-mini", "resnet"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    ap.add_argument("--json", type=Path, help="raw numbers as JSON")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    peak = {t: matmul_gflops(t) for t in args.threads}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-enc-") as tmp:
        for name in args.models:
            rows.extend(
                bench_model(name, args.repeats, args.warmup, Path(tmp), tuple(args.threads))
            )
            print(f"{name} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    table = markdown(rows, peak)
    cpu = _cpu_name()
    note = (
        f"\n\nCPU: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}; "
        f"load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
        f"median (min) of {args.repeats} timed runs after {args.warmup} warm-ups; efficiency and "
        f"real-time factor from the medians; batch 1, 10 s window; "
        f"efficiency = FLOPs / time / the best float32 GEMM (torch.mm or onnxruntime MatMul, "
        f"1024 and 2048 square); total {time.perf_counter() - t0:.0f} s."
    )
    print(table + note)
    if args.out:
        args.out.write_text(table + note + "\n")
    if args.json:
        args.json.write_text(json.dumps({"peak_gflops": peak, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    np.random.seed(0)
    sys.exit(main())
