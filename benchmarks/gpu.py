"""GPU training throughput of the paper's visual backbones, and achieved TFLOP/s vs the card's peak.

    python benchmarks/gpu.py                      # CUDA: R(2+1)D-18 and -34, 16x112x112, batch 16
    python benchmarks/gpu.py --batch 32 --modes bf16_cl,compile
    python benchmarks/gpu.py --cpu-smoke          # the same code path on CPU at tiny size (no GPU needed)

Model: gblend_cli.models.MultiModalNet, RGB only (VideoBackbone + its linear head, 400 classes),
fed uint8 clips (B, 16, 112, 112, 3) as the loader delivers them, trained with the training
core's step (autocast forward, cross-entropy on float32 logits, backward, SGD with momentum).
Modes:
  fp32            TF32 off for convolutions and matmuls: true fp32 (peak: fp32)
  tf32            PyTorch's default for convolutions (cudnn.allow_tf32 = True) (peak: tf32)
  bf16            bf16 autocast, NCDHW (peak: bf16 dense)
  bf16_cl         bf16 autocast + channels_last_3d, as `gblend` trains on CUDA (peak: bf16 dense)
  bf16_cl_bench   bf16_cl with torch.backends.cudnn.benchmark = True (gblend leaves it off)
  compile         bf16_cl + torch.compile (gblend's train.compile = true) (peak: bf16 dense)
FLOPs of one training step (forward + backward) are counted once per model with
torch.utils.flop_counter.FlopCounterMode; TFLOP/s = FLOPs per step / median step time. Peaks are
dense (no sparsity) figures from NVIDIA's data sheets, looked up by device name; unknown: n/a.
The whole run keeps to --budget-s (default 280 s): a mode that would not fit is skipped and says
so. Without CUDA (and without --cpu-smoke) it prints one line and exits 0.

This file runs as a script (python benchmarks/gpu.py): it imports only the installed gblend_cli.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

# dense TFLOP/s by data type; first matching pattern wins (more specific names first)
PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"H200.*NVL", {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (r"H100.*NVL", {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (r"H100.*PCIE", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (r"GH200|H200|H100", {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}),  # SXM: "NVIDIA H100 80GB HBM3", "NVIDIA H200"
    (r"A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
]

MODES = {  # name: (precision for the peak, autocast bf16, channels_last_3d, cudnn.benchmark, torch.compile, tf32)
    "fp32": ("fp32", False, False, False, False, False),
    "tf32": ("tf32", False, False, False, False, True),
    "bf16": ("bf16", True, False, False, False, True),
    "bf16_cl": ("bf16", True, True, False, False, True),
    "bf16_cl_bench": ("bf16", True, True, True, False, True),
    "compile": ("bf16", True, True, False, True, True),
}
MODELS = {"r2plus1d_18": "R(2+1)D-18", "r2plus1d_34": "R(2+1)D-34"}
COMPILE_RESERVE_S = 100.0  # a compile mode starts only with this much of the budget left


def peak_tflops(device_name: str, precision: str) -> float | None:
    name = device_name.upper()
    for pattern, peaks in PEAKS:
        if re.search(pattern, name):
            return peaks.get(precision)
    return None


def check_peak_lookup() -> None:
    """The lookup on real device names (CPU-independent part, run by --cpu-smoke)."""
    cases = {("NVIDIA H100 80GB HBM3", "bf16"): 989.0, ("NVIDIA H100 80GB HBM3", "fp32"): 67.0,
             ("NVIDIA H200", "bf16"): 989.0, ("NVIDIA H100 PCIe", "bf16"): 756.0, ("NVIDIA H100 NVL", "tf32"): 418.0,
             ("NVIDIA A100-SXM4-80GB", "bf16"): 312.0, ("NVIDIA A100-SXM4-40GB", "fp32"): 19.5,
             ("NVIDIA GH200 480GB", "bf16"): 989.0, ("Tesla V100-SXM2-16GB", "bf16"): None, ("cpu", "fp32"): None}
    for (name, prec), want in cases.items():
        got = peak_tflops(name, prec)
        assert got == want, f"peak_tflops({name!r}, {prec!r}) = {got}, expected {want}"


def build_model(arch: str, num_classes: int, smoke: bool):
    from gblend_cli.config import DEFAULTS
    from gblend_cli.models import MultiModalNet

    cfg = dict(DEFAULTS["model"])
    if smoke:
        cfg.update({"visual": "slim_r2plus1d", "visual_widths": [4, 8, 8, 8], "visual_layers": [1, 1, 1, 1]})
    else:
        cfg["visual"] = arch
    return MultiModalNet(["rgb"], ["rgb"], num_classes, cfg)


def count_step_flops(model, x, y) -> int:
    """FLOPs of one training step (forward + backward), fp32, counted by FlopCounterMode."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(model({"rgb": x})["rgb"].float(), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def set_precision_flags(tf32: bool, bench: bool) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = bench


def measure_mode(arch: str, mode: str, args, device, flops: int, deadline: float) -> dict:
    import torch
    import torch.nn.functional as F

    from gblend_cli.models import set_channels_last

    precision, amp, channels_last, bench, compile_, tf32 = MODES[mode]
    set_precision_flags(tf32, bench)
    torch.manual_seed(0)
    model = build_model(arch, args.classes, args.cpu_smoke).to(device)
    if channels_last:
        set_channels_last(model)  # the training core's own CUDA setting (VideoBackbone.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    step_model = torch.compile(model) if compile_ else model
    x = torch.randint(0, 256, (args.batch, args.frames, args.size, args.size, 3), dtype=torch.uint8, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = step_model({"rgb": x})["rgb"]
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.warmup + (2 if compile_ else 0)):  # compile: the first calls compile
        step()
    sync()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(args.rounds):
        if time.perf_counter() > deadline and times:
            break
        sync()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        times.append((time.perf_counter() - t) / args.steps)
    step_s = statistics.median(times)
    tflops = flops / step_s / 1e12
    peak = peak_tflops(args.device_name, precision)
    return {"model": arch, "mode": mode, "precision": precision, "batch": args.batch, "step_ms": 1000 * step_s,
            "clips_per_s": args.batch / step_s, "tflops": tflops, "peak_tflops": peak,
            "peak_fraction": tflops / peak if peak else None, "warmup_s": warm_s, "rounds": len(times),
            "max_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def render(rows: list[dict]) -> str:
    head = ["model", "mode", "batch", "ms/step", "clips/s", "TFLOP/s", "peak", "% of peak", "max mem GB", "note"]
    body = []
    for r in rows:
        if "error" in r or "skipped" in r:
            body.append([MODELS.get(r["model"], r["model"]), r["mode"], "", "", "", "", "", "", "",
                         r.get("error") or r.get("skipped")])
            continue
        body.append([MODELS.get(r["model"], r["model"]), r["mode"], str(r["batch"]), f"{r['step_ms']:.1f}",
                     f"{r['clips_per_s']:.1f}", f"{r['tflops']:.2f}" if r["tflops"] >= 0.01 else f"{r['tflops']:.2e}",
                     "n/a" if r["peak_tflops"] is None else f"{r['peak_tflops']:g} ({r['precision']})",
                     "n/a" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.1f}%",
                     "" if r["max_mem_gb"] is None else f"{r['max_mem_gb']:.1f}", ""])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(b) for b in body])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python benchmarks/gpu.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    ap.add_argument("--modes", help=f"comma-separated (default: all): {', '.join(MODES)}")
    ap.add_argument("--batch", type=int, default=16, help="clips per step (the kinetics400 recipe: 16 per GPU)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112, help="crop side (112; the paper's exact setting: 224)")
    ap.add_argument("--classes", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=3, help="steps before timing (compile: 2 more)")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds; the median round is reported")
    ap.add_argument("--budget-s", type=float, default=280.0, help="stop starting new measurements after this")
    ap.add_argument("--device-name", help="device name for the peak lookup (default: the CUDA device's)")
    ap.add_argument("--json", type=Path, help="also write the rows here (default on CUDA: "
                                               "benchmarks/results/<date>-gpu-<device>.json)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run the same code path on CPU at tiny size (slim backbone, 2x4x32x32 clips; compile only "
                         "if named in --modes)")
    a = ap.parse_args(argv)
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    explicit_modes = a.modes is not None
    a.modes = [m.strip() for m in (a.modes or ",".join(MODES)).split(",") if m.strip()]
    for m in a.models:
        if m not in MODELS:
            ap.error(f"--models: unknown model {m!r} (choose from {', '.join(MODELS)})")
    for m in a.modes:
        if m not in MODES:
            ap.error(f"--modes: unknown mode {m!r} (choose from {', '.join(MODES)})")
    for k in ("batch", "frames", "size", "classes", "steps", "rounds"):
        if getattr(a, k) <= 0:
            ap.error(f"--{k}: must be > 0")
    if a.cpu_smoke:
        a.batch, a.frames, a.size = min(a.batch, 2), min(a.frames, 4), min(a.size, 32)
        a.warmup, a.steps, a.rounds = min(a.warmup, 1), min(a.steps, 2), min(a.rounds, 2)
        if not explicit_modes:  # compile on CPU needs a C++ toolchain and ~1 minute: only when asked for
            a.modes = [m for m in a.modes if m != "compile"]
    return a


def main(argv=None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu benchmark: no CUDA device (torch.cuda.is_available() is False); nothing to measure. "
              "Use --cpu-smoke to check the code path on CPU.")
        return 0
    if args.cpu_smoke:
        check_peak_lookup()
        torch.set_num_threads(1)
        device = torch.device("cpu")
        args.device_name = args.device_name or "cpu"
    else:
        device = torch.device("cuda", torch.cuda.current_device())
        args.device_name = args.device_name or torch.cuda.get_device_name(device)
    deadline = t_start + args.budget_s
    info = {"device": args.device_name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "host": platform.node(), "date": datetime.date.today().isoformat(),
            "shape": f"{args.batch}x{args.frames}x{args.size}x{args.size}x3 uint8", "cpu_smoke": args.cpu_smoke}
    print(f"gpu benchmark on {args.device_name} (torch {torch.__version__}, CUDA {info['cuda']}, cuDNN {info['cudnn']}): "
          f"clips {info['shape']}, budget {args.budget_s:.0f}s", flush=True)
    rows, flops_by_model = [], {}
    for arch in args.models:
        set_precision_flags(False, False)
        model = build_model(arch, args.classes, args.cpu_smoke).to(device)
        x = torch.randint(0, 256, (args.batch, args.frames, args.size, args.size, 3), dtype=torch.uint8, device=device)
        y = torch.randint(0, args.classes, (args.batch,), device=device)
        flops = count_step_flops(model, x, y)
        flops_by_model[arch] = flops
        params = sum(p.numel() for p in model.parameters())
        del model, x, y
        print(f"{MODELS[arch]}{' (smoke: slim 4/8/8/8)' if args.cpu_smoke else ''}: {params / 1e6:.2f} M parameters, "
              f"{flops / 1e9:.4g} GFLOP per training step (forward ~{flops / args.batch / 3e9:.3g} GFLOP per clip, "
              f"backward ~2x)", flush=True)
    # every eager mode first, the slow-to-start compile modes last, so a tight budget drops only those
    jobs = [(a, m) for a in args.models for m in args.modes if not MODES[m][4]] + \
           [(a, m) for a in args.models for m in args.modes if MODES[m][4]]
    for arch, mode in jobs:
        left = deadline - time.perf_counter()
        if left < (COMPILE_RESERVE_S if MODES[mode][4] else 10.0):
            rows.append({"model": arch, "mode": mode, "skipped": f"skipped: {left:.0f}s of the budget left"})
            print(f"  {MODELS[arch]} {mode}: skipped ({left:.0f}s of the budget left)", flush=True)
            continue
        try:
            r = measure_mode(arch, mode, args, device, flops_by_model[arch], deadline)
        except Exception as e:  # noqa: BLE001 - one failing mode (e.g. compile) still reports the others
            r = {"model": arch, "mode": mode, "error": f"error: {type(e).__name__}: {str(e).splitlines()[0][:80]}"}
        rows.append(r)
        print(f"  {MODELS[arch]} {mode}: " + (r.get("error") or f"{r['step_ms']:.1f} ms/step, {r['clips_per_s']:.1f} "
                                              f"clips/s, {r['tflops']:.3g} TFLOP/s"), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    set_precision_flags(False, False)
    print()
    print(render(rows))
    wall = time.perf_counter() - t_start
    print(f"\n{wall:.0f} s wall. TFLOP/s = counted FLOPs per step / median step time; peaks are dense figures "
          f"for {args.device_name}" + (" (none known: n/a)" if all(r.get("peak_tflops") is None for r in rows) else ""))
    out = args.json
    if out is None and not args.cpu_smoke:
        slug = re.sub(r"[^a-z0-9]+", "-", args.device_name.lower()).strip("-")
        out = Path(__file__).resolve().parent / "results" / f"{info['date']}-gpu-{slug}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"info": info, "flops_per_step": flops_by_model, "rows": rows, "wall_s": wall},
                                  indent=1) + "\n")
        os.replace(tmp, out)
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
