"""Training checkpoints: weights, optimizer state and where training stands, in one .npz.

Keys: ``model/<layer>.<param>``, ``optim/<slot>.<i>`` and ``optim/t``, and
``meta``: a JSON string with the epoch reached, the position inside a
partly-done epoch (after Ctrl-C), the seed and the run's configuration. The
data order of every epoch is a pure function of (seed, epoch) -- see
``scratchcnn.data.loader`` -- so these keys are the whole random state.

Files are written with ``scratchcnn.files.save_npz_atomic``: a kill at any
moment leaves the previous complete checkpoint.

Reading trusts nothing: ``read_progress`` checks every metadata field's type and
range, ``check_arrays`` that weights and optimizer state are finite float arrays
and the step counter an integer scalar; each problem is a one-line ValueError
naming the file and the entry.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from scratchcnn.files import load_npz, save_npz_atomic
from scratchcnn.model import Sequential
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


#: Running sums of a partly-done epoch, and their types.
PARTIAL_KEYS = {"loss": float, "correct": int, "seen": int, "seconds": float, "wait": float}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_meta(meta: object, path: object) -> Progress:
    """Progress from a checkpoint's decoded metadata, every field checked."""
    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: corrupt checkpoint metadata: {what}; use another "
                          f"checkpoint (or best.npz) or start a new run")

    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object, got {type(meta).__name__}")
    names = {f.name for f in fields(Progress)}
    if set(meta) != names:
        extra, missing = sorted(set(meta) - names), sorted(names - set(meta))
        raise bad(", ".join(([f"unexpected keys {extra}"] if extra else []) +
                            ([f"missing keys {missing}"] if missing else [])))
    for key in ("epoch", "batch"):
        if not _is_int(meta[key]) or meta[key] < 0:
            raise bad(f"{key!r} must be an integer >= 0, got {meta[key]!r}")
    if not _is_real(meta["best_test_acc"]) or not -1 <= meta["best_test_acc"] <= 1:
        raise bad(f"'best_test_acc' must be a number in [-1, 1], got {meta['best_test_acc']!r}")
    config = meta["config"]
    if not isinstance(config, dict) or not isinstance(config.get("settings", {}), dict):
        raise bad("'config' must be an object ('settings', if present, too)")
    partial = meta["partial"]
    if not isinstance(partial, dict):
        raise bad(f"'partial' must be an object, got {type(partial).__name__}")
    if meta["batch"]:
        if set(partial) != set(PARTIAL_KEYS):
            raise bad(f"'partial' must hold {sorted(PARTIAL_KEYS)}, got {sorted(partial)}")
        for k, kind in PARTIAL_KEYS.items():
            v = partial[k]
            if not (_is_int(v) if kind is int else _is_real(v)) or v < 0:
                raise bad(f"'partial.{k}' must be a number >= 0, got {v!r}")
        if partial["seen"] < 1 or partial["correct"] > partial["seen"]:
            raise bad(f"'partial' counts are inconsistent (seen {partial['seen']}, correct "
                      f"{partial['correct']})")
    elif partial:
        raise bad("'partial' must be empty when 'batch' is 0")
    return Progress(**meta)


def read_progress(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], Progress]:
    """Read a checkpoint's arrays and its progress; ValueError (one line) if it is not one."""
    arrays = load_npz(path)
    if "meta" not in arrays:
        raise ValueError(f"{path}: not a training checkpoint (no 'meta' entry); "
                         f"weights-only files work with --eval-only")
    meta_array = arrays.pop("meta")
    if meta_array.shape != () or meta_array.dtype.kind != "U":
        raise ValueError(f"{path}: corrupt checkpoint metadata ('meta' is not one string); "
                         f"use another checkpoint or start a new run")
    try:
        meta = json.loads(str(meta_array))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt checkpoint metadata ({e}); use another checkpoint "
                         f"or start a new run") from None
    if not isinstance(meta, dict) or meta.pop("format", None) != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format; expected {FORMAT}")
    check_arrays(arrays, path)
    return arrays, _check_meta(meta, path)


def check_arrays(arrays: dict[str, np.ndarray], path: object) -> None:
    """Weights and optimizer state: real float arrays, all finite; ``optim/t`` an integer
    scalar >= 0. ValueError naming the file and the first bad entry."""
    for name, a in arrays.items():
        if name == "optim/t":
            if a.shape != () or a.dtype.kind not in "iu" or int(a) < 0:
                raise ValueError(f"{path}: entry {name!r} (the optimizer's step counter) must "
                                 f"be one integer >= 0, got dtype {a.dtype} shape {a.shape}; "
                                 f"the file is corrupt: use another checkpoint")
            continue
        if a.dtype.kind != "f":
            raise ValueError(f"{path}: entry {name!r} has dtype {a.dtype}, expected float "
                             f"numbers; the file is corrupt: use another checkpoint")
        if not np.isfinite(a).all():
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise ValueError(f"{path}: entry {name!r} holds {bad} non-finite value(s) (NaN or "
                             f"inf); training diverged before this file was written: use an "
                             f"earlier checkpoint (best.npz) or start again with a lower --lr")


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
    """Weights from a training checkpoint (model/...) or a ``Sequential.save`` file,
    checked (float, finite) like a resumed checkpoint's."""
    arrays = load_npz(path)
    stripped = _strip(arrays, "model/")
    weights = stripped if stripped else {k: v for k, v in arrays.items() if k != "meta"}
    check_arrays(weights, path)
    return weights


def _strip(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
