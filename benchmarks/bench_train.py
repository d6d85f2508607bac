"""Training-step throughput and MFU of the full R2D2 objective, bf16 against fp32, in one run.

    .venv/bin/python benchmarks/bench_train.py --size tiny --batch 32 --steps 5        # CPU smoke run
    python3 benchmarks/bench_train.py --size base --batch 128 --steps 30               # on a GPU

What it does
  Builds the model of a size preset (`r2d2/configs/<size>.yaml`) with every objective of
  pre-training on (GCPR with momentum queue, FGR both directions, TgD, FgD, MLM), makes a
  synthetic batch on the device (random pixels, random token ids: throughput does not depend
  on content) and times `r2d2.train.trainer.train_step`, the trainer's own step (objective,
  backward, clip, AdamW, schedule, teacher update), after warm-up steps.
  Baseline: the same step in fp32, measured in the same run. Ours: bf16 autocast, what the
  trainer uses on a GPU (`precision: auto`).
  FLOPs of one step are counted once by `torch.utils.flop_counter.FlopCounterMode` (matmuls and
  attention, forward and backward; elementwise work is not counted, as MFU conventions do).
  MFU = counted FLOPs per second / the device's dense bf16 peak (--peak-tflops, or known for
  H100/H200/A100; none on CPU).
Writes benchmarks/results/train-<device>.json and its rows of BENCHMARKS.md (unless --no-save).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

from r2d2.config import TrainConfig, model_config  # noqa: E402
from r2d2.model.r2d2 import build_model  # noqa: E402
from r2d2.model.teacher import MomentumTeacher  # noqa: E402
from r2d2.train.objective import Batch, R2D2Objective  # noqa: E402
from r2d2.train.schedule import build_scheduler  # noqa: E402
from r2d2.train.trainer import build_optimizer, train_step  # noqa: E402

# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, without sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def synthetic_batch(size: int, length: int, batch: int, vocab: int, device: torch.device, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return Batch(
        images=torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
        input_ids=ids, attention_mask=torch.ones_like(ids), image_ids=torch.arange(batch),
    ).to(device)


def measure(size: str, batch_size: int, text_len: int, steps: int, warmup: int, precision: str, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    mcfg = model_config(size=size)
    cfg = TrainConfig(batch_size=batch_size, precision=precision)
    model = build_model(mcfg).to(device).train()
    teacher = MomentumTeacher(model.dual, cfg.distill.momentum, cfg.distill.queue_size).to(device)
    objective = R2D2Objective(model, cfg, teacher)
    optimizer = build_optimizer(model, cfg)  # the trainer's own AdamW settings
    scheduler = build_scheduler(optimizer, 0, steps + warmup + 1, 0.1)
    generator = torch.Generator(device=device).manual_seed(0)
    batch = synthetic_batch(mcfg.vision.image_size, min(text_len, mcfg.text.max_len), batch_size, mcfg.text.vocab_size, device, 0)
    bf16 = precision == "bf16"

    def step() -> None:
        train_step(objective, model, teacher, optimizer, scheduler, batch, cfg.distill.alpha, generator, cfg.grad_clip, bf16)

    for _ in range(warmup):
        step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    out = {"precision": precision, "step_s": dt, "samples_per_s": batch_size / dt, "flops_per_step": counter.get_total_flops(),
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    out["tflops"] = out["flops_per_step"] / dt / 1e12
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=["tiny", "base", "large"], help="model size preset")
    ap.add_argument("--batch", type=int, default=32, help="global batch = per-device batch here (one device)")
    ap.add_argument("--text-len", type=int, default=32, help="tokens per caption (R2D2 captions are short)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per precision")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, for MFU")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 baseline as a user would run it on Ampere+
        torch.backends.cudnn.allow_tf32 = True
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else common.cpu_model()
    print(f"[bench] {args.size} batch {args.batch} text {args.text_len} on {name}; peak bf16 {peak or '?'} TFLOP/s", flush=True)
    rows = {}
    for precision in ("fp32", "bf16"):
        r = measure(args.size, args.batch, args.text_len, args.steps, args.warmup, precision, device)
        r["mfu"] = r["tflops"] / peak if peak else None
        rows[precision] = r
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "-"
        mem = f"{r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else ""
        print(f"[run] {precision}: {r['samples_per_s']:8.1f} samples/s | {r['step_s'] * 1e3:7.1f} ms/step | "
              f"{r['flops_per_step'] / 1e9:.1f} GFLOP/step | {r['tflops']:6.1f} TFLOP/s | MFU {mfu} {mem}", flush=True)
    ratio = rows["bf16"]["samples_per_s"] / rows["fp32"]["samples_per_s"]
    print(f"bf16 / fp32 throughput: {ratio:.2f}x; {rows['bf16']['params_m']:.0f} M parameters")
    if args.no_save:
        return
    tag = "cuda" if device.type == "cuda" else "cpu"
    b, f = rows["bf16"], rows["fp32"]

    def mfu(r: dict[str, Any]) -> str:
        return f", MFU {100 * r['mfu']:.1f} %" if r["mfu"] is not None else ""

    table = [{
        "benchmark": f"training step, full R2D2 objective: {args.size} ({b['params_m']:.0f} M params), batch {args.batch}, "
                     f"text {args.text_len} tokens (mean of {args.steps} steps)",
        "baseline": f"fp32{' (TF32 matmuls)' if tag == 'cuda' else ''}: {f['samples_per_s']:.0f} samples/s, {f['tflops']:.1f} TFLOP/s{mfu(f)}",
        "ours": f"bf16 autocast (the trainer's GPU default): {b['samples_per_s']:.0f} samples/s, {b['tflops']:.1f} TFLOP/s{mfu(b)}",
        "ratio": f"**{ratio:.2f}×**", "target": "— (MFU recorded)",
        "machine": name, "date": common.now()[:10],
        "command": f"`python benchmarks/bench_train.py --size {args.size} --batch {args.batch} --steps {args.steps}`",
    }]
    path = common.write_results(f"train-{tag}", {"benchmark": "train", "date": common.now(), "device": name, "peak_tflops": peak,
                                                 "args": vars(args), "runs": rows, "table": table})
    common.render_benchmarks_md()
    print(f"wrote {path.relative_to(common.ROOT)} and BENCHMARKS.md")


if __name__ == "__main__":
    main()
