"""Training checkpoints that survive a crash at any instant and resume a run exactly.

A checkpoint holds everything the next step depends on: model, optimizer, LR schedule, EMA, loss scaler,
epoch and step counters, and every random generator (torch, CUDA, numpy, Python; one set per rank). Data order
and augmentation are functions of (seed, epoch, index) (see :mod:`archlab.train.data`), so restoring these is
enough to replay the rest of the run bit for bit.

Files are written to a temporary name, flushed to disk and renamed over the old one (``os.replace`` is atomic
on POSIX and Windows), so a kill at any moment leaves either the previous checkpoint or the new one, never a
torn file. Everything stored is plain tensors and Python scalars, so checkpoints load with
``torch.load(weights_only=True)``: resuming never executes code from the file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archlab.weights import WeightsError, read_checkpoint

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "archlab-train/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or not from ``archlab train``."""


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files that :func:`atomic_write_bytes` left in ``folder`` when its process was killed
    mid-write (SIGKILL, power loss); a file of a process still running (another rank, another worker) is kept.
    Returns the files removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
            continue
        except ProcessLookupError:
            pass
        except PermissionError:  # it exists, under another user
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically as ``run_dir/checkpoint.pt``; returns the path."""
    path = Path(run_dir) / CHECKPOINT_NAME
    atomic_write_bytes(path, lambda f: torch.save({"format": FORMAT, **state}, f))
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint (a run folder or the file itself) without executing anything in it."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume (was the run started with --out?)")
    try:
        obj = read_checkpoint(path)  # never executing code; names what the file is when it is no checkpoint
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint written by `archlab train`")
    return obj


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, by name: equal digests mean bit-identical models."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ RNG states


def capture_rng() -> dict[str, Any]:
    """Every generator the training step draws from, as tensors and Python scalars (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
