"""A small trainer (nanoGPT/torchtitan spirit): AdamW, warmup+cosine, clipping, bf16 on GPU,
DDP under torchrun, atomic checkpoints with everything needed for a bit-exact resume.

Exact resume: batches are a pure function of (seed, epoch, step) (see `PairData.batch`), and
the checkpoint holds model, teacher (with its queues), optimizer, scheduler, the sampling
generator and the global RNG state, so `--resume latest` continues the very same run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from r2d2.config import ModelConfig, TrainConfig
from r2d2.data.pairs import PairData
from r2d2.errors import UserError
from r2d2.model.io import load_pretrained, save_pretrained
from r2d2.model.r2d2 import R2D2Model, build_model
from r2d2.model.teacher import MomentumTeacher
from r2d2.train.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from r2d2.train.distributed import DistInfo, init_distributed
from r2d2.train.objective import Batch, R2D2Objective, needs_teacher
from r2d2.train.schedule import build_scheduler

LogFn = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    out_dir: Path
    model_dir: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_s: float = 0.0
    stopped_early: bool = False


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, embeddings' 1-D params and the temperature."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _StopFlag:
    """SIGTERM/SIGINT (preemption) -> checkpoint at the end of the current step, then exit."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        # signal handlers can only be set from the main thread (not inside a Prefect worker thread)
        with contextlib.suppress(ValueError):
            self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        self.stop = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def build_optimizer(model: R2D2Model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups` (no decay on norms, biases, temperatures), as the trainer and its benchmark use it."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                             foreach=True)  # multi-tensor update: torch only defaults to it on GPU


def train_step(
    wrapped: torch.nn.Module, model: R2D2Model, teacher: MomentumTeacher | None, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, batch: Batch, alpha: float, generator: torch.Generator,
    grad_clip: float, use_bf16: bool,
) -> dict[str, torch.Tensor]:
    """One optimisation step: objective (bf16 autocast on GPU), backward, clip, AdamW, schedule,
    temperature clamp, momentum-teacher update and queue push. `benchmarks/bench_train.py` times
    exactly this function, so its figures are the trainer's."""
    device_type = batch.images.device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=use_bf16):
        terms = wrapped(batch, alpha=alpha, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    model.dual.clamp_temperature()
    if teacher is not None:
        teacher.update(model.dual)
        if teacher.queue is not None:
            teacher.queue.enqueue(*terms["_teacher_feats"], batch.image_ids)
    return terms


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    data: PairData,
    out_dir: str | Path,
    init_from: str | Path | None = None,
    resume: str | None = None,
    stop_after: int | None = None,
    on_log: LogFn | None = None,
    progress: bool = True,
    dist_info: DistInfo | None = None,
) -> TrainResult:
    """Train and write `out_dir/{checkpoints/, model/, history.jsonl, train_metrics.json}`."""
    di = dist_info or init_distributed()
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    if cfg.deterministic:
        # Without this, two 2-thread CPU runs of the demo pre-training differed from the first logged
        # step (~1e-8) and by whole R@1 points at the end; with it (or with one thread) they are
        # bit-identical. warn_only: an op with no deterministic kernel warns instead of stopping a run.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' reproducible mode, read at handle creation
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.seed)
    if init_from:
        model, model_cfg = load_pretrained(init_from)
    else:
        model = build_model(model_cfg)
    model.to(di.device).train()
    if cfg.freeze_image:
        model.dual.visual_encoder.requires_grad_(False)

    teacher = None
    if needs_teacher(cfg, model.has_cross):
        teacher = MomentumTeacher(model.dual, cfg.distill.momentum, cfg.distill.queue_size).to(di.device)
    objective = R2D2Objective(model, cfg, teacher)
    wrapped: torch.nn.Module = objective
    if di.distributed:
        wrapped = DDP(objective, device_ids=[di.local_rank] if di.device.type == "cuda" else None,
                      find_unused_parameters=True)

    steps_per_epoch = data.steps_per_epoch(cfg.batch_size, di.world_size)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, min(cfg.warmup_steps, total // 2), total, cfg.min_lr_ratio)
    generator = torch.Generator(device=di.device).manual_seed(cfg.seed * 7919 + di.rank)
    ramp = cfg.distill.alpha_ramp_steps if cfg.distill.alpha_ramp_steps is not None else steps_per_epoch
    use_bf16 = di.device.type == "cuda" and cfg.precision in ("auto", "bf16")

    start = 0
    history: list[dict[str, float]] = []
    ckpt_path = resolve_resume(resume, ckpt_dir)
    if ckpt_path is None and resume is None and any(ckpt_dir.glob("step_*.pt")):
        raise UserError(f"{out} already holds checkpoints of another run: pass --resume latest to continue it, "
                        "or choose a new --out")
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"])
        start = int(state["step"])
        history = list(state.get("history", []))

    def checkpoint(step: int) -> None:
        if not di.is_main:
            return
        save_checkpoint(ckpt_dir, step, {
            "step": step,
            "model": model.state_dict(),
            "teacher": teacher.state_dict() if teacher is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "history": history,
            "model_config": model_cfg.model_dump(mode="json"),
            "train_config": cfg.model_dump(mode="json"),
        })

    history_path = out / "history.jsonl"
    if di.is_main:  # rewritten from the checkpoint on resume, then appended live (`tail -f` works)
        out.mkdir(parents=True, exist_ok=True)
        history_path.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")

    bar = tqdm(total=total, initial=start, desc=f"{cfg.task}", disable=not (progress and di.is_main), dynamic_ncols=True)
    sums: dict[str, float] = {}
    count, t_log, seen = 0, time.perf_counter(), 0
    t_start, samples_total = time.perf_counter(), 0
    stopped = False
    step = start
    with _StopFlag() as flag:
        for step in range(start, total):
            epoch, in_epoch = divmod(step, steps_per_epoch)
            batch = data.batch(epoch, in_epoch, cfg.batch_size, cfg.seed, di.rank, di.world_size).to(di.device)
            alpha = cfg.distill.alpha * min(1.0, step / ramp) if ramp > 0 else cfg.distill.alpha
            terms = train_step(wrapped, model, teacher, optimizer, scheduler, batch, alpha, generator, cfg.grad_clip, use_bf16)
            n = batch.images.shape[0] * di.world_size
            seen += n
            samples_total += n
            for k, v in terms.items():
                if not k.startswith("_"):
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == total:
                dt = time.perf_counter() - t_log
                row = {"step": done, "epoch": epoch, "lr": scheduler.get_last_lr()[0], "samples_per_s": seen / max(dt, 1e-9)}
                row.update({k: v / count for k, v in sums.items()})
                history.append(row)
                if di.is_main:
                    with open(history_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
                bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k not in ("step", "epoch")})
                if on_log is not None and di.is_main:
                    on_log(done, row)
                sums, count, t_log, seen = {}, 0, time.perf_counter(), 0
            if done % cfg.ckpt_every == 0 or done == total:
                checkpoint(done)
            if (stop_after is not None and done >= stop_after and done < total) or flag.stop:
                checkpoint(done)
                stopped = True
                break
    bar.close()
    elapsed = time.perf_counter() - t_start
    model_dir = out / "model"
    result = TrainResult(out_dir=out, model_dir=model_dir, steps=step + 1, history=history,
                         samples_per_s=samples_total / max(elapsed, 1e-9), stopped_early=stopped)
    if di.is_main and not stopped:
        save_pretrained(model, model_dir, extra={"task": cfg.task, "steps": total})
        write_history(out, history, result)
    return result


def write_history(out: Path, history: list[dict[str, float]], result: TrainResult) -> None:
    last = history[-1] if history else {}
    summary = {"steps": result.steps, "samples_per_s": round(result.samples_per_s, 2),
               **{f"final_{k}": round(v, 5) for k, v in last.items() if k not in ("step", "epoch")}}
    (out / "train_metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    try:
        from r2d2.train.plots import plot_losses

        plot_losses(history, out / "loss.png")
    except ImportError:  # plotting is a nicety, never a failure
        pass


def unwrap(model: torch.nn.Module) -> R2D2Model:
    return getattr(model, "module", model)
