"""Training checkpoints: weights, optimizer state and where training stands, in one .npz.

Keys: ``model/<layer>.<param>``, ``optim/<slot>.<i>`` and ``optim/t``, and
``meta``: a JSON string with the epoch reached, the position inside a
partly-done epoch (after Ctrl-C), the seed and the run's configuration. The
data order of every epoch is a pure function of (seed, epoch) -- see
``scratchcnn.data.loader`` -- so these keys are the whole random state.

Files are written with ``save_npz_atomic``: a kill at any moment leaves the
previous complete checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from scratchcnn.model import Sequential, load_npz, save_npz_atomic
from scratchcnn.optim import Optimizer

FORMAT = "scratchcnn-checkpoint-1"


@dataclass
class Progress:
    """Where training stands. ``batch`` > 0 means epoch ``epoch + 1`` is partly done."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # batches of the next epoch already trained (after an interrupt)
    partial: dict = field(default_factory=dict)  # running sums of that partial epoch
    best_test_acc: float = -1.0
    config: dict = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, model: Sequential, opt: Optimizer,
                    progress: Progress) -> None:
    """Write model, optimizer and progress to ``path`` atomically."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": v for k, v in opt.state_dict().items()})
    meta = {"format": FORMAT, **asdict(progress)}
    arrays["meta"] = np.array(json.dumps(meta))
    save_npz_atomic(path, arrays)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder holding ``checkpoint.npz``."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.npz"
    if not p.is_file():
        raise ValueError(f"{p}: no such checkpoint; pass a checkpoint.npz or its run folder")
    return p


def read_progress(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], Progress]:
    """Read a checkpoint's arrays and its progress; ValueError (one line) if it is not one."""
    arrays = load_npz(path)
    if "meta" not in arrays:
        raise ValueError(f"{path}: not a training checkpoint (no 'meta' entry); "
                         f"weights-only files work with --eval-only")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt checkpoint metadata ({e})") from None
    if meta.pop("format", None) != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format; expected {FORMAT}")
    return arrays, Progress(**meta)


def restore(arrays: dict[str, np.ndarray], source: str, model: Sequential,
            opt: Optimizer | None = None) -> None:
    """Load model (and optimizer) state from checkpoint arrays."""
    model.load_state_dict(_strip(arrays, "model/"), source=source)
    if opt is not None:
        try:
            opt.load_state_dict(_strip(arrays, "optim/"))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{source}: {e}") from None


def model_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Weights from a training checkpoint (model/...) or a ``Sequential.save`` file."""
    arrays = load_npz(path)
    stripped = _strip(arrays, "model/")
    return stripped if stripped else arrays


def _strip(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
