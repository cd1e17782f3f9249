"""Training checkpoints without pickle: tensors in ``state.safetensors``, the rest in
``state.json``.

A checkpoint folder may come from someone else (a shared run folder, a download), and
``torch.load`` of a pickle runs whatever code the pickle names. Here tensors go through
safetensors (a header and raw buffers) and everything else (the step, optimizer
hyper-parameters and scalar state, RNG states as lists of numbers, the loop's history)
through JSON, so loading a checkpoint never executes anything. Every trainer (LoRA/QLoRA,
the multi-task encoder) builds its checkpoint from these pieces:

* :func:`optimizer_state` / :func:`load_optimizer_state`: ``optimizer.<index>.<name>``
  tensors plus JSON param groups and scalars;
* :func:`rng_state` / :func:`set_rng_state`: torch, CUDA and NumPy generator states as
  tensors, Python's and NumPy's scalars as JSON;
* :func:`write_checkpoint` / :func:`read_checkpoint`: the folder, replaced atomically on write;
  on read, files that are missing, too large or malformed end in one
  :class:`~affedge.errors.AffedgeError` line.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affedge.atomic import staged_dir
from affedge.errors import AffedgeError

TENSORS = "state.safetensors"
META = "state.json"
#: The largest ``state.json`` read (a long history is a few MB at most).
MAX_META_BYTES = 64 * 2**20
#: Pickled checkpoints of earlier versions: refused, never loaded.
LEGACY_PICKLE = "state.pt"


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state dict as (tensors, JSON): per-parameter tensors under
    ``optimizer.<index>.<name>``, other per-parameter values and the param groups as JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Restore what :func:`optimizer_state` split (``betas`` come back as a tuple)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in section(tensors, "optimizer.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state(py_rng: random.Random | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Every generator's state as (tensors, JSON): torch, CUDA and NumPy's key array as
    tensors; Python's (``py_rng``, else the global one) and NumPy's scalars as lists."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    np_kind, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_keys, dtype=np.int64))
    version, internal, gauss = (py_rng or random).getstate()
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [np_kind, int(np_pos), int(np_gauss), float(np_cached)],
    }
    return tensors, meta


def python_rng_state(meta: dict[str, Any]) -> tuple[Any, ...]:
    """``random.setstate``'s argument from :func:`rng_state`'s JSON."""
    version, internal, gauss = meta["python"]
    return (version, tuple(internal), gauss)


def set_rng_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], py_rng: random.Random | None = None
) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where both runs had CUDA)."""
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors.get(f"rng.cuda.{i}") for i in range(torch.cuda.device_count())]
        if all(state is not None for state in cuda):
            torch.cuda.set_rng_state_all(cuda)
    np_kind, np_pos, np_gauss, np_cached = meta["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((np_kind, keys, np_pos, np_gauss, np_cached))
    (py_rng or random).setstate(python_rng_state(meta))


def section(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, with the prefix taken off their names."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """``folder`` with the tensors (from CPU copies) and the JSON, replacing any earlier
    checkpoint there atomically."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with staged_dir(folder) as stage:
        save_file(cpu, stage / TENSORS)
        (stage / META).write_text(json.dumps(meta) + "\n", encoding="utf-8")


def has_checkpoint(folder: Path) -> bool:
    """True if ``folder`` holds a checkpoint; an old pickled one is refused with one line."""
    if (folder / META).is_file():
        return True
    if (folder / LEGACY_PICKLE).exists():
        raise AffedgeError(
            f"{folder}: a pickled checkpoint ({LEGACY_PICKLE}) from an older affedge; it is not "
            "loaded (a pickle can run code): delete it, or train without --resume"
        )
    return False


def read_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON) of a checkpoint folder; AffedgeError (one line) if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path = folder / META
    try:
        size = meta_path.stat().st_size
        if size > MAX_META_BYTES:
            raise AffedgeError(f"{meta_path}: {size:,} bytes, more than a checkpoint holds")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(folder / TENSORS, device="cpu")
    except (OSError, UnicodeDecodeError, ValueError, SafetensorError) as exc:
        raise AffedgeError(f"{folder}: unreadable checkpoint ({_first_line(exc)})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise AffedgeError(f"{meta_path}: not a checkpoint (no integer 'step')")
    return tensors, meta


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
