"""Infrastructure shared by the learned nets' training and loading (`morph3d.neural.refine`, the
face super-resolver, and `morph3d.neural.completion`, the UV-texture completion net).

One implementation of each piece, so both nets list media, cache their extracted data,
write and verify weights and checkpoint / resume the same way:

- media listing with holdout / exclude patterns (`split_media`) and the data cache
  (`cache_key`, `load_cached`: a damaged cache file is deleted and rebuilt);
- weights: float32 ``.npz`` arrays + an ``arch`` JSON string, with a ``.json`` manifest
  beside it that holds the file's sha256 (`write_weights`, `load_verified`);
- training: progress bar, seeding, per-file sampling weights, checkpoint save / resume
  (`Checkpoint`) and the cosine-schedule training loop (`train_loop`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from morph3d.errors import InputError
from morph3d.io.atomic import atomic_write
from morph3d.io.paths import sha256_file
from morph3d.neural.weights import (
    load_verified,
    manifest_path,
    save_npz,
    write_weights,
)

__all__ = [
    "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "Checkpoint", "TrainOptionsBase", "cache_key",
    "default_checkpoint", "default_trained_weights", "for_each_frame", "load_cached",
    "load_verified", "manifest_path", "matches", "media_files", "progress_bar", "save_npz",
    "seed_torch", "sha256_file", "source_weights", "split_media", "train_loop",
    "write_weights",
]

T = TypeVar("T")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v"}


# --------------------------------------------------------------------------------------------
# Training data: media files, holdout split, cache
# --------------------------------------------------------------------------------------------


def media_files(data_dir: str | os.PathLike) -> list[Path]:
    """Photos and videos under `data_dir` (recursively), sorted by relative path."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"training data folder not found: {root}")
    files = [p for p in root.rglob("*") if p.is_file()
             and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in patterns)


def split_media(root: Path, holdout: Sequence[str],
                exclude: Sequence[str]) -> tuple[list[Path], list[str], list[bool]]:
    """(files, relative names, held out?) of the media under `root`, without the files whose
    relative path or name matches `exclude`. Held out: those matching `holdout`; when none
    does, every 7th file (sorted), so a split by file always exists."""
    files = [p for p in media_files(root)
             if not matches(p.relative_to(root).as_posix(), exclude)
             and not matches(p.name, exclude)]
    rel = [p.relative_to(root).as_posix() for p in files]
    is_held = [matches(r, holdout) or matches(Path(r).name, holdout) for r in rel]
    if files and not any(is_held):
        is_held = [i % 7 == 3 for i in range(len(files))]
    return files, rel, is_held


def cache_key(files: Sequence[Path], root: Path, params: dict[str, Any]) -> str:
    """16 hex digits from `params` and the files' relative names, sizes and times."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for p in files:
        st = p.stat()
        digest.update(f"{p.relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_cached(path: Path, load: Callable[[Path], T], use_cache: bool = True) -> T | None:
    """`load(path)` when caching is on and the file exists; None (rebuild) otherwise. A cache
    that cannot be read is deleted, so a damaged file is rebuilt instead of failing."""
    if use_cache and path.is_file():
        try:
            return load(path)
        except Exception:  # a damaged cache is rebuilt
            path.unlink(missing_ok=True)
    return None


def for_each_frame(files: Sequence[Path], names: Sequence[str], held: Sequence[bool], *,
                   frame_step: int, desc: str, progress: bool,
                   visit: Callable[[Any, str, bool, Any], None],
                   skip: tuple[type[Exception], ...] = (InputError,)) -> None:
    """`visit(frame, name, held, detector)` for every photo and every `frame_step`-th video
    frame of `files` (`morph3d.io.media.iter_frames`), with one MediaPipe face detector open,
    under a progress bar. A file that raises one of `skip` is skipped with a warning."""
    from fitting.detection import get_landmark_backend
    from morph3d.io.media import iter_frames

    bar = progress_bar(total=len(files), desc=desc, enabled=progress)
    with get_landmark_backend("mediapipe") as detector:
        for path, name, is_held in zip(files, names, held, strict=True):
            try:
                for frame in iter_frames(path):
                    if frame.index % frame_step == 0:
                        visit(frame, name, is_held, detector)
            except skip as exc:
                warnings.warn(f"skipping {name}: {exc}", RuntimeWarning, stacklevel=3)
            bar.update(1)
    bar.close()


# --------------------------------------------------------------------------------------------
# Training: progress, seeding, sampling weights, checkpoints, the loop
# --------------------------------------------------------------------------------------------


@dataclass
class TrainOptionsBase:
    """The options every net's training has (the nets' option classes add their own and
    set their defaults)."""

    data_dir: Path
    out: Path
    checkpoint: Path
    steps: int = 2000
    minutes: float | None = None
    resume: bool = False
    seed: int = 0
    lr: float = 1e-3
    checkpoint_every: int = 100
    threads: int = 1
    holdout: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    progress: bool = True

    def identity(self) -> dict[str, Any]:
        """What must match for --resume to continue a checkpoint (subclasses add theirs)."""
        return {"seed": self.seed, "lr": self.lr, "steps": self.steps,
                "holdout": list(self.holdout), "exclude": list(self.exclude)}


def default_checkpoint(name: str) -> Path:
    from morph3d.io.paths import cache_dir

    return cache_dir() / "train" / f"{name}_checkpoint.pt"


def default_trained_weights(name: str) -> Path:
    from morph3d.io.paths import models_dir

    return models_dir() / f"{name}.npz"


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled,
                dynamic_ncols=True, mininterval=2.0)


def seed_torch(threads: int, seed: int) -> None:
    """Thread count, deterministic kernels and seed: a run is reproducible for a given
    seed and thread count."""
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)


def source_weights(names: Sequence[str]) -> np.ndarray:
    """Sampling probabilities of items from the source files `names`: a file's share grows
    with the square root of its item count, so one long video does not drown the photos
    and one photo is not repeated into memorisation."""
    counts = {n: names.count(n) for n in set(names)}
    weights = np.array([1.0 / math.sqrt(counts[n]) for n in names])
    return weights / weights.sum()


class Checkpoint:
    """Training state at `path`: step, elapsed seconds, the nets, optimizer and numpy rng.
    `nets` maps a checkpoint key to a module or to a dict of modules."""

    def __init__(self, path: Path, identity: dict[str, Any], nets: dict[str, Any],
                 optimizer: Any, rng: np.random.Generator) -> None:
        self.path, self.identity, self.nets = path, identity, nets
        self.optimizer, self.rng = optimizer, rng
        self.step, self.elapsed = 0, 0.0

    def resume(self, log: Callable[[str], None]) -> None:
        """Continue from the saved state; `InputError` when missing, unreadable, not a plain
        checkpoint or made with other settings (`identity`).

        Loaded with `weights_only=True`: the checkpoint holds tensors and plain types only
        (the rng state is a dict of ints), so a file that needs any other class is refused
        instead of running code from it.
        """
        import pickle

        import torch

        if not self.path.is_file():
            raise InputError(f"no checkpoint to resume at {self.path}")
        try:
            ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
                TypeError, AttributeError, ImportError, KeyError, IndexError) as exc:
            raise InputError(f"cannot resume from checkpoint {self.path}: "
                             f"{_unsafe_reason(exc)}; delete it or train without --resume"
                             ) from None
        if not isinstance(ckpt, dict) or ckpt.get("identity") != self.identity:
            found = ckpt.get("identity") if isinstance(ckpt, dict) else type(ckpt).__name__
            raise InputError(f"checkpoint {self.path} was made with other settings: {found}")
        try:
            for key, net in self.nets.items():
                if isinstance(net, dict):
                    for k, n in net.items():
                        n.load_state_dict(ckpt[key][k])
                else:
                    net.load_state_dict(ckpt[key])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.rng.bit_generator.state = ckpt["rng"]
            step, elapsed = int(ckpt["step"]), float(ckpt["elapsed_s"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"checkpoint {self.path} does not fit these nets "
                             f"({_first_line(exc)}); delete it or train without --resume"
                             ) from None
        self.step, self.elapsed = step, elapsed
        log(f"resumed at step {self.step} ({self.elapsed / 60:.1f} min trained)")

    def save(self) -> None:
        import torch

        state: dict[str, Any] = {"identity": self.identity, "step": self.step,
                                 "elapsed_s": self.elapsed}
        for key, net in self.nets.items():
            state[key] = ({k: n.state_dict() for k, n in net.items()}
                          if isinstance(net, dict) else net.state_dict())
        state.update(optimizer=self.optimizer.state_dict(), rng=self.rng.bit_generator.state)
        with atomic_write(self.path) as f:
            torch.save(state, f)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _unsafe_reason(exc: BaseException) -> str:
    """One line on why `torch.load(weights_only=True)` refused a file. torch's own message
    is paragraphs of advice ending with the unpickler's verdict; keep only the verdict."""
    text = str(exc)
    verdict = text.find("WeightsUnpickler error:")
    if verdict >= 0:
        line = text[verdict + len("WeightsUnpickler error:"):].strip().splitlines()[0]
        line = line.split(" was not an allowed global")[0].strip()
        if "global" in line.lower():
            return f"loading it would run code, not only read data ({line}); refused"
        return f"it is not a readable checkpoint ({line})"
    if "Weights only load failed" in text:
        return "it is not a plain checkpoint (tensors, numbers, strings, lists, dicts)"
    return f"it is not a readable checkpoint ({_first_line(exc)})"


def train_loop(ckpt: Checkpoint, step_fn: Callable[[], dict[str, float]], *, steps: int,
               minutes: float | None, lr: float, checkpoint_every: int, progress: bool,
               log: Callable[[str], None],
               describe: Callable[[dict[str, float]], str] | None = None) -> str:
    """Run `step_fn` (a batch's forward and backward; returns its losses by name) with Adam
    steps and a cosine learning-rate schedule until `steps` or `minutes` of training in
    all (across resumes), checkpointing every `checkpoint_every` steps, on Ctrl-C and at
    the end. Returns what stopped it: ``"steps"`` or ``"time budget"``."""
    optimizer = ckpt.optimizer
    budget_s = minutes * 60.0 if minutes is not None else math.inf
    bar = progress_bar(total=steps, desc="training", enabled=progress, initial=ckpt.step)
    smooth: dict[str, float] = {}
    try:
        while ckpt.step < steps and ckpt.elapsed < budget_s:
            start = time.perf_counter()
            # Cosine schedule over whichever of steps or the time cap is further along
            # (the time term makes runs that hit --minutes not bit-reproducible).
            done = min(1.0, max(ckpt.step / steps, ckpt.elapsed / budget_s))
            lr_now = lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * done)))
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            optimizer.zero_grad(set_to_none=True)
            losses = step_fn()
            optimizer.step()
            for key, value in losses.items():
                smooth[key] = 0.98 * smooth.get(key, value) + 0.02 * value
            ckpt.step += 1
            ckpt.elapsed += time.perf_counter() - start
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in smooth.items()}, refresh=False)
            if ckpt.step % checkpoint_every == 0:
                ckpt.save()
                if not progress:
                    text = (describe(smooth) if describe is not None
                            else " ".join(f"{k} {v:.4f}" for k, v in smooth.items()))
                    log(f"step {ckpt.step}/{steps} {ckpt.elapsed / 60:.1f} min {text}")
    except KeyboardInterrupt:
        ckpt.save()
        bar.close()
        log(f"interrupted: checkpoint at step {ckpt.step} saved to {ckpt.path}; "
            "continue with --resume")
        raise
    bar.close()
    ckpt.save()
    stopped = "steps" if ckpt.step >= steps else "time budget"
    log(f"stopped at step {ckpt.step} ({stopped}) after {ckpt.elapsed / 60:.1f} min; "
        "evaluating")
    return stopped
