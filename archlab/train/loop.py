"""The training loop: one process's view of a (possibly distributed) supervised classification run.

Ingredients, each a flag of ``archlab train``: SGD (Nesterov) or AdamW without weight decay on norms and
biases; a per-step cosine schedule with linear warm-up (Loshchilov & Hutter 2016, "SGDR", arXiv:1608.03983;
Goyal et al. 2017, arXiv:1706.02677); label smoothing (Szegedy et al. 2015, arXiv:1512.00567); stochastic depth
(Huang et al. 2016, arXiv:1603.09382, via ``create_model(drop_path_rate=...)``); TrivialAugment / RandAugment /
AutoAugment and random erasing (:class:`archlab.train.data.Augmentation`); MixUp / CutMix drawn per sample
(:mod:`archlab.train.mixing`); an exponential moving average of
the weights; bf16/fp16 autocast; gradient-norm clipping; gradient checkpointing (:mod:`archlab.checkpointing`).

Exactness: every piece of state the next step reads is in the checkpoint (see :mod:`archlab.train.checkpoint`),
and the data a step sees is a function of (seed, epoch, step) (see :mod:`archlab.train.data`). A run resumed
from an epoch-end checkpoint (after a crash) or a mid-epoch one (after SIGTERM/SIGINT) ends bit-identical to an
uninterrupted run on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archlab.models.base import training_logits
from archlab.preprocessing import Preprocessing
from archlab.train.checkpoint import atomic_write_text, capture_rng, restore_rng, save_checkpoint, seed_everything
from archlab.train.checkpoint import remove_stale_temporaries, state_digest
from archlab.train.data import CIFAR_MEAN, CIFAR_STD, DIGITS_MEAN, DIGITS_STD, FASHION_MEAN, FASHION_STD, Augmentation
from archlab.train.data import build_data, make_eval_loader, make_train_loader
from archlab.train.distributed import DistContext, all_reduce_sum, barrier, broadcast_buffers, gather_objects
from archlab.train.distributed import wrap_model
from archlab.train.evaluate import autocast, evaluate
from archlab.train.mixing import MixedDataset, mixing_from_config, soft_accuracy_targets
from archlab.train.runlog import plot_curves, write_config, write_metrics


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in config.json and in every checkpoint."""

    model: str
    data: str
    run_dir: str
    epochs: int
    batch_size: int  # global: split evenly over the processes, so results do not depend on their number
    lr: float
    weight_decay: float
    opt: str = "sgd"
    momentum: float = 0.9
    sched: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: str = "none"  # per-image policy on top of crop/flip: none, trivial, randaugment, autoaugment
    random_erase: float = 0.0  # random-erasing probability
    mixup: float = 0.0  # MixUp Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0  # CutMix Beta(alpha, alpha); 0 = off
    mix_prob: float = 1.0  # chance that a sample is mixed when mixup or cutmix is on
    drop_path: float = 0.0
    ema: float = 0.0  # EMA decay; 0 = no EMA
    amp: str | None = None
    channels_last: bool = False
    seed: int = 0
    input_size: int | None = None
    workers: int = 0
    clip_grad: float | None = None
    device: str | None = None
    grad_checkpointing: bool = False  # recompute each block in backward: less memory, same results
    pretrained: bool | str | None = None  # start from the released ImageNet weights (True or a tag): fine-tuning
    data_fraction: float = 1.0  # fixed-seed share of the training split (quick budgets)
    bad_images: str = "refuse"  # undecodable ImageFolder images: refuse (list them all) or skip (named in the run)


SKIPPED_NAME = "skipped_images.txt"  # in the run folder: the undecodable images a run was trained without


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived: the step was finished and a checkpoint saved."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class ModelEma:
    """Exponential moving average of the weights (buffers copied), as in Polyak & Juditsky 1992.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` so that short runs are not dominated by the
    random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        ema_params = list(self.module.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - decay)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)


class WarmupCosine:
    """LR multiplier at a step: linear warm-up from ~0, then cosine decay to 0 (or constant with 'none'; or 'step':
    divided by 10 at 50% and 75% of the steps after warm-up, the CIFAR schedule of He et al. 2015, arXiv:1512.03385)."""

    def __init__(self, total_steps: int, warmup_steps: int, shape: str = "cosine") -> None:
        self.total_steps, self.warmup_steps, self.shape = total_steps, warmup_steps, shape

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.shape == "none":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.shape == "step":
            return 0.1 ** sum(progress >= m for m in (0.5, 0.75))
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def training_preprocessing(kind: str, model_name: str, input_size: int | None) -> Preprocessing:
    """Normalisation by the data's own statistics for the small built-in sets, the card's for ImageFolder."""
    if kind == "digits":
        return Preprocessing(input_size or 32, DIGITS_MEAN, DIGITS_STD, "bilinear", 1.0)
    if kind == "cifar":
        return Preprocessing(input_size or 32, CIFAR_MEAN, CIFAR_STD, "bilinear", 1.0)
    if kind == "fashion-mnist":
        return Preprocessing(input_size or 28, FASHION_MEAN, FASHION_STD, "bilinear", 1.0)
    from archlab.registry import model_card, parse_model_spec

    return Preprocessing.from_card(model_card(parse_model_spec(model_name)[0]), input_size)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on norm scales and biases (1-D tensors): decaying them only fights the normalisation.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.opt!r}; choose sgd or adamw")


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag checked once per step (a second Ctrl-C aborts at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _test_hang_hook(step: int, stop: StopRequest) -> None:
    """ARCHLAB_TEST_HANG_AFTER_STEP=N: after step N, announce it and wait for a signal (tests kill us here)."""
    if os.environ.get("ARCHLAB_TEST_HANG_AFTER_STEP") != str(step):
        return
    marker = os.environ.get("ARCHLAB_TEST_HANG_MARKER")
    if marker:
        Path(marker).write_text(str(step))
    print(f"archlab-test: waiting after step {step}", file=sys.stderr, flush=True)
    while stop.signum is None:
        time.sleep(0.02)


def _progress(console: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console)


def backward_and_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler | None, clip_grad: float | None) -> None:
    """Backward, optional gradient-norm clipping (on unscaled gradients under fp16 loss scaling), optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        return
    loss.backward()
    if clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()


def _restore(resume: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, ema: ModelEma | None,
             scaler: torch.amp.GradScaler | None) -> None:
    """Load every piece of training state a checkpoint holds (positions and RNG streams are the caller's)."""
    from archlab.weights import check_state_dict

    check_state_dict(model, resume["model"])  # e.g. --data now has another number of classes: keys named
    model.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])
    if ema is not None and resume.get("ema") is not None:
        ema.module.load_state_dict(resume["ema"])
    if scaler is not None and resume.get("scaler"):
        scaler.load_state_dict(resume["scaler"])


def _epoch_record(epoch: int, step: int, lr: float, running: list[float], val: dict[str, float],
                  val_ema: dict[str, float] | None, images: int, train_s: float, epoch_s: float) -> dict[str, Any]:
    """One row of metrics.csv: the epoch's running training loss/accuracy and its validation results."""
    n = max(running[2], 1)
    return {
        "epoch": epoch, "step": step, "lr": lr, "train_loss": running[0] / n, "train_acc": 100 * running[1] / n,
        "val_loss": val["loss"], "val_acc": val["top1"], "val_acc_ema": val_ema["top1"] if val_ema else None,
        "images_per_s": images / max(train_s, 1e-9), "epoch_s": epoch_s,
    }


def train(cfg: TrainConfig, ctx: DistContext, console: Any = None, resume: dict[str, Any] | None = None,
          notes: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run (or continue, from checkpoint dict ``resume``) the training described by ``cfg``.

    ``console`` is a rich console for the progress bars (``None``: silent; ranks other than 0 are always
    silent). Returns the final metrics. Raises :class:`TrainingDiverged` on a non-finite loss (nothing is
    saved, so the last checkpoint stays the last good one) and :class:`TrainingInterrupted` after a signal.
    """
    from archlab.registry import create_from_spec, model_card, parse_model_spec

    run_dir, device = Path(cfg.run_dir), ctx.device
    if ctx.is_main and run_dir.is_dir():
        remove_stale_temporaries(run_dir)  # a checkpoint write killed mid-way leaves its temporary file behind
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {ctx.world_size} processes")
    per_rank_batch = cfg.batch_size // ctx.world_size
    seed_everything(cfg.seed)
    with contextlib.ExitStack() as stack:
        on_scan = None
        if console is not None and ctx.is_main:  # an ImageFolder's images are checked first: show it on big ones
            scan = stack.enter_context(_progress(console))
            task = scan.add_task("checking images", total=None, info="", visible=False)

            def show_scan(done: int, total: int) -> None:
                scan.update(task, completed=done, total=total, visible=total > 2048)

            on_scan = show_scan

        bundle = build_data(cfg.data, lambda kind: training_preprocessing(kind, cfg.model, cfg.input_size),
                            augment=Augmentation(cfg.augment, cfg.random_erase), fraction=cfg.data_fraction,
                            bad_images=cfg.bad_images, on_scan=on_scan)
    if console is not None and ctx.is_main:  # once the data is known good: what the caller wants said
        for note in notes:
            console.print(f"note: {note}", highlight=False)
    if bundle.skipped and ctx.is_main:  # named in the run folder, so the run says what it was trained without
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / SKIPPED_NAME, "".join(f"{p}\n" for p in bundle.skipped))
        if console is not None:
            console.print(f"skipped {len(bundle.skipped)} undecodable image(s), listed in {run_dir / SKIPPED_NAME}")
    pretrained = cfg.pretrained if resume is None else False  # a resumed run's checkpoint holds every weight
    if pretrained:
        from archlab.pretrained import fetch, resolve_pretrained

        if ctx.is_main:  # one download; the other ranks read the cached file
            fetch(resolve_pretrained(model_card(parse_model_spec(cfg.model)[0]), pretrained))
        barrier(ctx)
    # cfg.model is a name or a spec, NAME:key=value (archlab.registry.parse_model_spec): a design study's arm.
    model = create_from_spec(cfg.model, num_classes=bundle.num_classes, drop_path_rate=cfg.drop_path,
                             pretrained=pretrained or False).to(device)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    ema = ModelEma(model, cfg.ema) if cfg.ema else None
    optimizer = build_optimizer(model, cfg)
    pin = device.type == "cuda"
    train_set = bundle.train
    mixing = mixing_from_config(cfg)
    if mixing:  # per sample, inside the seeded-sample rule (archlab.train.mixing)
        train_set = MixedDataset(train_set, bundle.num_classes, **mixing)
    loader, seeded, sampler = make_train_loader(train_set, per_rank_batch, cfg.seed, ctx.rank, ctx.world_size,
                                                cfg.workers, pin)
    val_loader = make_eval_loader(bundle.val, per_rank_batch, ctx.rank, ctx.world_size, cfg.workers, pin)
    steps_per_epoch = len(sampler) // per_rank_batch
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {len(bundle.train)} training images")
    schedule = WarmupCosine(steps_per_epoch * cfg.epochs, round(cfg.warmup_epochs * steps_per_epoch), cfg.sched)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" and device.type == "cuda" else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    config = {**asdict(cfg), "num_classes": bundle.num_classes, "classes": bundle.classes[:1000],
              "preprocessing": bundle.preprocessing.to_dict(), "world_size": ctx.world_size,
              "steps_per_epoch": steps_per_epoch, "torch": str(torch.__version__)}

    epoch, batch_in_epoch, step, history = 0, 0, 0, []
    running = [0.0, 0.0, 0.0]  # loss * n, correct, n over the epoch so far (all ranks)
    if resume is not None:
        _restore(resume, model, optimizer, scheduler, ema, scaler)
        epoch, batch_in_epoch, step = resume["epoch"], resume["batch_in_epoch"], resume["step"]
        history, running = list(resume["history"]), list(resume["running"])
        rngs = resume["rng"]
        if len(rngs) == ctx.world_size:
            restore_rng(rngs[ctx.rank])
        else:  # another number of processes: continue, but the random streams cannot be the same ones
            seed_everything(cfg.seed + 1000 * epoch + ctx.rank)
    else:
        seed_everything(cfg.seed + ctx.rank)  # each rank its own dropout / drop-path stream
    net = wrap_model(model, ctx)
    main = ctx.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, config)

    def checkpoint() -> Path | None:
        rngs = gather_objects(capture_rng(), ctx)
        if not main:
            return None
        return save_checkpoint(run_dir, {
            "model_name": cfg.model, "config": config, "model": model.state_dict(),
            "ema": ema.module.state_dict() if ema else None, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step, "history": history,
            "running": running, "rng": rngs,
        })

    progress = _progress(console) if (console is not None and main) else None
    t_start = time.perf_counter()
    with StopRequest() as stop, (progress or contextlib.nullcontext()):
        while epoch < cfg.epochs:
            seeded.set_epoch(epoch)
            sampler.set_epoch(epoch)
            sampler.start_index = batch_in_epoch * per_rank_batch
            task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch,
                                     completed=batch_in_epoch, info="") if progress else None
            t_epoch, images_seen = time.perf_counter(), 0
            net.train()
            for images, targets in loader:
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                targets = targets.to(device, non_blocking=True)
                with autocast(device, cfg.amp):
                    output = net(images)  # logits, or logits with auxiliary ones (GoogLeNet, Inception-v3)
                    loss = model.training_loss(output, targets, criterion) if hasattr(model, "training_loss") \
                        else criterion(output, targets)
                    logits = training_logits(output)
                correct = (logits.detach().argmax(1) == soft_accuracy_targets(targets)).sum().item()
                # One collective per step: the loss (NaN anywhere makes it NaN everywhere), accuracy, and
                # whether any rank was asked to stop — so all ranks stop after the same step.
                loss_sum, correct, n, stops = all_reduce_sum(
                    [loss.item() * len(targets), correct, len(targets), float(stop.signum is not None)], ctx)
                if not math.isfinite(loss_sum):
                    raise TrainingDiverged(
                        f"non-finite loss ({loss_sum / n}) at step {step + 1} (epoch {epoch + 1}, batch "
                        f"{batch_in_epoch + 1}); training stopped, the last good checkpoint in {run_dir} is "
                        f"untouched (try a lower --lr, --clip-grad or --amp bf16 instead of fp16)")
                backward_and_step(loss, model, optimizer, scaler, cfg.clip_grad)
                scheduler.step()
                step += 1
                batch_in_epoch += 1
                if ema is not None:
                    ema.update(model, step)
                running = [running[0] + loss_sum, running[1] + correct, running[2] + n]
                images_seen += n
                if progress:
                    rate = images_seen / max(time.perf_counter() - t_epoch, 1e-9)
                    progress.update(task, advance=1, info=f"loss {running[0] / running[2]:.4f}  "
                                    f"acc {100 * running[1] / running[2]:.2f}%  {rate:,.0f} img/s")
                if stops:
                    path = checkpoint()
                    raise TrainingInterrupted(
                        f"stopped by {signal.Signals(stop.signum or signal.SIGTERM).name} after step {step} "
                        f"(epoch {epoch + 1}); checkpoint saved to {path or run_dir}; continue with "
                        f"--resume {run_dir}", stop.signum or signal.SIGTERM)
                _test_hang_hook(step, stop)
            train_s = time.perf_counter() - t_epoch
            broadcast_buffers(model, ctx)
            val = evaluate(model, val_loader, device, cfg.amp, cfg.channels_last, ctx)
            val_ema = None
            if ema is not None:
                broadcast_buffers(ema.module, ctx)
                val_ema = evaluate(ema.module, val_loader, device, cfg.amp, cfg.channels_last, ctx)
            history.append(_epoch_record(epoch + 1, step, optimizer.param_groups[0]["lr"], running, val, val_ema,
                                         images_seen, train_s, time.perf_counter() - t_epoch))
            epoch, batch_in_epoch, running = epoch + 1, 0, [0.0, 0.0, 0.0]
            checkpoint()
            if main:
                write_metrics(run_dir, history)
                plot_curves(run_dir, history, f"{cfg.model} on {Path(cfg.data).name or cfg.data}")
            if progress:
                row = history[-1]
                ema_text = f" (EMA {row['val_acc_ema']:.2f}%)" if val_ema else ""
                progress.update(task, info=f"loss {row['train_loss']:.4f}  acc {row['train_acc']:.2f}%  "
                                f"val {row['val_acc']:.2f}%{ema_text}  {row['images_per_s']:,.0f} img/s")
    # Every rank hashes its final weights: DDP must have kept them bit-identical, and the report says so.
    digests = gather_objects(state_digest(model), ctx)
    last = history[-1] if history else {}
    return {"run_dir": str(run_dir), "model": cfg.model, "data": cfg.data, "epochs": epoch, "steps": step,
            "weights_sha256": digests[0], "ranks_in_sync": len(set(digests)) == 1, "world_size": ctx.world_size,
            "val_acc": last.get("val_acc"), "val_acc_ema": last.get("val_acc_ema"), "val_loss": last.get("val_loss"),
            "train_loss": last.get("train_loss"), "seconds": time.perf_counter() - t_start,
            "checkpoint": str(run_dir / "checkpoint.pt")}
