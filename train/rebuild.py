"""`affedge train rebuild RUN`: a run's merged model from its manifest and LoRA adapters.

A run trained on another machine comes back without its merged weights: a GPU lease returns
at most 64 MiB a call, and SmolLM2-135M's merged weights are 270 MB (bf16) to 540 MB (fp32),
while its adapters are a few MB per stage (DESIGN.md). This folds the adapters into the base
exactly as the trainer did, with the trainer's own functions:

* progressive: stage by stage in the manifest's order (``stages/<stage>/adapter.safetensors``),
  each loaded onto the model so far with the run's quantization and folded in by
  :func:`affedge.train.lora.merge`; a QLoRA run's merged model is quantized to NF4 again
  before the next stage, as in training;
* multitask: the one adapter (``adapter/``) on the base.

The merged model, the base's tokenizer files and config are written into the run folder
(the folder exports and reports read); the manifest is left as it was, with a ``rebuilt``
record added (device, dtype, seconds). Rebuilding on the CPU gives fp32 weights; a bf16 run
trained on CUDA differs from them by bf16 rounding only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from affedge.artifact import Manifest, has_manifest
from affedge.errors import ModelError
from affedge.train.llm_common import (
    ADAPTER_WEIGHTS,
    MULTITASK_ADAPTER_DIR,
    STAGES_DIR,
    model_dtype_for_save,
    run_base,
)
from affedge.train.lora import (
    LoraSettings,
    add_lora,
    load_adapter_state,
    load_base,
    merge,
    save_model,
)


def adapter_files(run: Path, manifest: dict[str, Any]) -> list[tuple[str, Path]]:
    """(label, adapter weights file) in the order the trainer folded them in."""
    if manifest.get("method") == "progressive":
        stages = [info["stage"] for info in manifest.get("stages", [])]
        files = [(s, run / STAGES_DIR / s / ADAPTER_WEIGHTS) for s in stages]
    elif manifest.get("method") == "multitask":
        files = [("multitask", run / MULTITASK_ADAPTER_DIR / ADAPTER_WEIGHTS)]
    else:
        raise ModelError(f"{run}: not a progressive or multitask LLM run (no adapters to fold)")
    if not files:
        raise ModelError(f"{run}/affedge.json: the run records no stages")
    missing = [str(f) for _, f in files if not f.is_file()]
    if missing:
        raise ModelError(f"{missing[0]}: adapter missing (copy the run's adapters back first)")
    return files


def chain(
    run: Path, manifest: dict[str, Any], device: torch.device
) -> Iterator[tuple[str, Any, Any]]:
    """Yield (label, merged model, tokenizer) after each adapter the run folded in, in order;
    the model yielded last is the run's final model. Each model is only valid until the
    next is yielded (the chain merges in place)."""
    from safetensors.torch import load_file

    from affedge.train.hf_base import hf_folder

    files = adapter_files(run, manifest)
    base = run_base(manifest)
    quant = manifest.get("quantization") or "none"
    hp = manifest["hyperparameters"]
    settings = LoraSettings(hp["rank"], hp["alpha"], 0.0, tuple(hp["lora_targets"]))
    start = hf_folder(base)  # what a QLoRA stage's 4-bit model is loaded from
    model, tok = load_base(start, quant, device)
    with tempfile.TemporaryDirectory(prefix="affedge-rebuild-") as work:
        for index, (label, file) in enumerate(files):
            peft_model = add_lora(model, settings, 0)
            load_adapter_state(peft_model, load_file(file))
            model = merge(peft_model, quant, start, device)
            model.eval()
            yield label, model, tok
            if quant == "nf4" and index + 1 < len(files):  # as the trainer does
                start = Path(work) / f"merged-{label}"
                save_model(model, tok, start, model_dtype_for_save(device))
                model, _ = load_base(start, quant, device)


def rebuild(
    run: Path, device: torch.device | None = None, log: Callable[[str], None] = print
) -> Path:
    """Write ``run``'s merged model into ``run`` (see the module docstring); returns ``run``."""
    run = Path(run)
    if not has_manifest(run):
        raise ModelError(f"{run}: no affedge.json (not a training run folder)")
    device = device or torch.device("cpu")
    manifest = Manifest.read(run).to_dict()
    t0 = time.perf_counter()
    final: tuple[Any, Any] = (None, None)
    for label, model, tok in chain(run, manifest, device):
        log(f"rebuild: folded in {label}")
        final = (model, tok)
    model, tok = final
    dtype = model_dtype_for_save(device)
    # Written beside the run and moved in file by file (each rename atomic), so an
    # interrupted rebuild never leaves a half-written model.safetensors in the run.
    scratch = Path(tempfile.mkdtemp(prefix=".rebuild.", dir=run))
    try:
        save_model(model, tok, scratch, dtype)
        for file in scratch.iterdir():
            os.replace(file, run / file.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    record = {
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    # The manifest is rewritten last: a "rebuilt" record means the weights are all there.
    written = Manifest.read(run)
    written.info["rebuilt"] = record
    written.write(run)
    log(f"rebuild: wrote {run / 'model.safetensors'} ({record['dtype']}, {record['seconds']} s)")
    return run
