"""`affedge export gguf-lora`: a trained LoRA -> a llama.cpp LoRA adapter GGUF on a GGUF base.

The file is llama.cpp's adapter format (written by its convert_lora_to_gguf.py, read by its
src/llama-adapter.cpp), every name from gguf-py where it has one:

* metadata: ``general.architecture`` (the base's; llama.cpp refuses another),
  ``general.type = "adapter"``, ``adapter.type = "lora"``, ``adapter.lora.alpha`` (f32):
  llama.cpp adds ``scale * alpha / rank * B·(A·x)`` to ``W·x``, rank being the lora_b's ne[0];
* for each adapted matrix ``W`` (llama.cpp's tensor name, ``blk.N.attn_q.weight``) two
  tensors: ``W.lora_a`` = peft's A, numpy shape [rank, n_in] (GGUF ne [n_in, rank]), and
  ``W.lora_b`` = peft's B, [n_out, rank] (ne [rank, n_out]); llama.cpp checks ne[0] of A and
  ne[1] of B against W and refuses an adapter that does not fit its base;
* the base GGUF holds llama q/k weights with their rows in llama.cpp's rotary layout
  (export/gguf_writer.py), and B's rows are W's output rows, so the q and k B matrices go
  through the same permutation; A is left as it is.

A progressive run (train/progressive.py) trains stage i on the base with stages < i merged in,
so its model is ``W + sum_i s_i B_i A_i = W + [s_1 B_1 ... s_n B_n] [A_1; ...; A_n]``: the
stage adapters become one adapter of rank ``sum r_i`` (B and A concatenated along the rank).

The artifact (``OUT/adapter.gguf`` + ``affedge.json``, kind ``affedge-llm-gguf-lora``) runs on
llama.cpp with the base named in the manifest, and is verified like every export: labels of
adapter-on-base against the trained (merged) model in torch on the same token ids.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from affedge.artifact import ArtifactKind, Manifest, has_manifest
from affedge.atomic import atomic_path, staged_dir
from affedge.errors import ModelError
from affedge.export import gguf_writer
from affedge.export.artifact import Source, check_floor, load_source_model, write_manifest
from affedge.models import BUILTIN, ModelRef, resolve_model

ADAPTER_FILE = "adapter.gguf"
#: peft's adapter folder: the config and the A/B weights (peft's name, or the trainers').
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter.safetensors")
#: llama.cpp's ``adapter.type`` value and tensor suffixes (src/llama-adapter.cpp; gguf-py has
#: no constants for these).
LORA_TYPE = "lora"
LORA_A, LORA_B = ".lora_a", ".lora_b"
OUT_TYPES = gguf_writer.OUT_TYPES
#: Items whose full next-token logits are compared with the source (every vocabulary entry).
LOGIT_ITEMS = 20
#: peft config fields that change what the weights mean, with the value plain LoRA has.
_PLAIN_LORA = {
    "use_dora": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "modules_to_save": None,
    "bias": "none",
    "fan_in_fan_out": False,
    "layer_replication": None,
}
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


@dataclass
class LoraAdapter:
    """One peft LoRA adapter: its folder, rank, scale and (A, B) per adapted HF module."""

    folder: Path
    rank: int
    #: peft's scaling of B·A: alpha / rank (alpha / sqrt(rank) with rsLoRA).
    scale: float
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class GGUFBase:
    """What the adapter must fit: the base GGUF's architecture, heads and tensor shapes."""

    path: Path
    arch: str
    n_head: int
    n_head_kv: int
    n_layer: int
    shapes: dict[str, tuple[int, ...]]  # numpy order: [n_out, n_in]
    weight_type: str  # the commonest matrix type (f16, q8_0, q4_1 ...)


# ------------------------------------------------------------------ reading


def adapter_folders(path: Path) -> list[Path]:
    """The adapter folders of ``path``: a peft adapter folder itself, a multitask run's
    ``adapter/``, or a progressive run's ``stages/<stage>/`` in stage order."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelError(f"{path}: no such run or adapter folder")
    if (path / ADAPTER_CONFIG).is_file():
        return [path]
    if (path / "adapter" / ADAPTER_CONFIG).is_file():
        return [path / "adapter"]
    stages = path / "stages"
    order: list[str] = []
    if has_manifest(path):
        order = [str(s.get("stage")) for s in Manifest.read(path).info.get("stages") or []]
    found = (
        sorted(p.parent.name for p in stages.glob(f"*/{ADAPTER_CONFIG}")) if stages.is_dir() else []
    )
    if not found:
        raise ModelError(
            f"{path}: no LoRA adapter ({ADAPTER_CONFIG} here, in adapter/ or in stages/*/); "
            "give a run folder of `affedge train progressive|multitask` or a peft adapter folder"
        )
    names = [s for s in order if s in found] + [s for s in found if s not in order]
    return [stages / name for name in names]


def read_adapter(folder: Path) -> LoraAdapter:
    """A peft LoRA adapter folder, checked: plain LoRA, every A with its B, one rank."""
    from safetensors.torch import load_file

    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder / ADAPTER_CONFIG}: unreadable ({exc})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise ModelError(f"{folder}: not a LoRA adapter (peft_type {kind!r}, expected 'LORA')")
    for key, plain in _PLAIN_LORA.items():
        if config.get(key, plain) not in (plain, None, {}, [], False, "none"):
            raise ModelError(f"{folder}: peft option {key}={config[key]!r} is not supported")
    weights = next((folder / n for n in ADAPTER_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise ModelError(f"{folder}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    try:
        tensors = load_file(str(weights))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{weights}: unreadable safetensors ({exc})") from None
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None or tensor.ndim != 2:
            raise ModelError(f"{weights}: tensor {key!r} is not a LoRA A/B matrix")
        parts.setdefault(match["module"], {})[match["ab"]] = tensor.float().numpy()
    rank, alpha = int(config.get("r", 0)), float(config.get("lora_alpha", 0))
    pairs = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise ModelError(f"{weights}: {module} has lora_{''.join(ab)} without its pair")
        a, b = ab["A"], ab["B"]
        if a.shape[0] != rank or b.shape[1] != rank:
            raise ModelError(f"{weights}: {module} has rank {a.shape[0]}/{b.shape[1]}, not {rank}")
        pairs[module] = (a, b)
    if not pairs or rank <= 0:
        raise ModelError(f"{weights}: no LoRA weights")
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return LoraAdapter(folder, rank, scale, pairs)


def read_base(path: Path) -> GGUFBase:
    """The base GGUF's architecture, head counts and tensor shapes (metadata only)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable GGUF ({exc})") from None

    def value(key: str) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    arch = value(gguf.Keys.General.ARCHITECTURE)
    if value(gguf.Keys.General.TYPE) == gguf.GGUFType.ADAPTER:
        raise ModelError(f"{path}: is an adapter, not a base model")
    n_head = value(gguf.Keys.Attention.HEAD_COUNT.format(arch=arch))
    if arch not in gguf_writer.ARCHITECTURES.values() or not n_head:
        raise ModelError(f"{path}: base architecture {arch!r} is not supported (llama, qwen2)")
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    types = Counter(t.tensor_type.name.lower() for t in reader.tensors if len(t.shape) == 2)
    return GGUFBase(
        path=Path(path),
        arch=arch,
        n_head=int(n_head),
        n_head_kv=int(value(gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch)) or n_head),
        n_layer=int(value(gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch))),
        shapes=shapes,
        weight_type=types.most_common(1)[0][0],
    )


# ------------------------------------------------------------------ writing


@dataclass
class LoraPlan:
    """The adapter as written: (GGUF name, A, B) per matrix, the alpha, the total rank."""

    tensors: list[tuple[str, np.ndarray, np.ndarray]]
    alpha: float
    rank: int


def plan_lora(adapters: list[LoraAdapter], base: GGUFBase) -> LoraPlan:
    """Name, combine (rank-concatenated stages), permute and check the adapters' matrices
    against ``base``; ModelError if they do not fit it."""
    import gguf

    arch_id = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == base.arch)
    name_map = gguf.get_tensor_name_map(arch_id, base.n_layer)
    permute = base.arch in {gguf_writer.ARCHITECTURES[m] for m in gguf_writer.PERMUTE_QK}
    # One scale for the file (alpha / rank): stages of equal scale keep theirs; otherwise
    # each B carries its own scale and alpha = rank makes llama.cpp's factor 1.
    fold = len({a.scale for a in adapters}) > 1
    modules = sorted({m for a in adapters for m in a.pairs})
    tensors = []
    for module in modules:
        used = [a for a in adapters if module in a.pairs]
        a_all = np.concatenate([a.pairs[module][0] for a in used], axis=0)
        b_all = np.concatenate(
            [a.pairs[module][1] * (a.scale if fold else 1.0) for a in used], axis=1
        )
        name = name_map.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if name is None:
            raise ModelError(f"{used[0].folder}: adapted module {module} has no {base.arch} tensor")
        want = (b_all.shape[0], a_all.shape[1])
        if base.shapes.get(name) != want:
            got = base.shapes.get(name, "missing")
            raise ModelError(
                f"{used[0].folder}: the adapter does not fit the base {base.path.name}: "
                f"{name} is {got} there, {want} in the adapter (trained on another model?)"
            )
        if permute and module.endswith("self_attn.q_proj"):
            b_all = gguf_writer.permute_rotary(b_all, base.n_head)
        elif permute and module.endswith("self_attn.k_proj"):
            b_all = gguf_writer.permute_rotary(b_all, base.n_head_kv)
        tensors.append((name, a_all, b_all))
    ranks = {a.shape[0] for _, a, _ in tensors}
    if len(ranks) != 1:  # some stages adapted other modules: no common rank for alpha
        raise ModelError(f"{adapters[0].folder}: the stage adapters target different modules")
    rank = ranks.pop()
    alpha = float(rank) if fold else adapters[0].scale * rank
    return LoraPlan(tensors, alpha, rank)


def write_lora_gguf(plan: LoraPlan, base: GGUFBase, out: Path, out_type: str, name: str) -> Path:
    """Write ``plan`` as a llama.cpp LoRA adapter GGUF at ``out`` (atomically)."""
    import gguf

    if out_type not in OUT_TYPES:
        raise ModelError(f"adapter type {out_type!r}: choose one of {', '.join(OUT_TYPES)}")
    dtype = np.float32 if out_type == "f32" else np.float16
    file_type = gguf.LlamaFileType.ALL_F32 if out_type == "f32" else gguf.LlamaFileType.MOSTLY_F16
    writer = gguf.GGUFWriter(None, base.arch)
    with atomic_path(out) as partial, closing(writer):
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, LORA_TYPE)
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, plan.alpha)
        writer.add_name(name)
        writer.add_file_type(int(file_type))
        for tensor_name, a, b in plan.tensors:
            writer.add_tensor(tensor_name + LORA_A, np.ascontiguousarray(a.astype(dtype)))
            writer.add_tensor(tensor_name + LORA_B, np.ascontiguousarray(b.astype(dtype)))
        writer.write_header_to_file(partial)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    return out


# ------------------------------------------------------------------ the export


def resolve_base(spec: str) -> tuple[str, Path]:
    """(manifest value, GGUF file) for ``--base``: a built-in model name stays a name, a path
    becomes absolute. ModelError unless it is a GGUF model."""
    ref = resolve_model(spec)
    if ref.kind != ArtifactKind.LLM_GGUF.value:
        raise ModelError(
            f"base {spec}: not a GGUF model; pass --base with the GGUF the adapter is for "
            "(`affedge export gguf` writes one from a HF folder)"
        )
    builtin = any(m.name == spec for m in BUILTIN)
    return (spec if builtin else str(ref.path.resolve())), ref.path


def _reference_model(
    run: Path, manifest: Manifest | None, adapters: list[LoraAdapter], base: Path
) -> tuple[Source, Any]:
    """The model the artifact must reproduce: the run's merged model, or (a bare adapter
    folder) the base in torch with ``W += scale * B @ A`` for each adapter."""
    import torch

    from affedge.train.hf_base import hf_folder, load_causal_lm

    if manifest is not None and (run / "config.json").is_file():
        return Source(run, run, manifest), None
    folder = hf_folder(base)
    model, _ = load_causal_lm(folder)
    with torch.no_grad():
        for adapter in adapters:
            for module, (a, b) in adapter.pairs.items():
                weight = model.get_submodule(module).weight
                weight += adapter.scale * torch.from_numpy(b) @ torch.from_numpy(a)
    return Source(run, folder, None), model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_gguf_lora(
    run: Path,
    out: Path,
    base: str | None = None,
    out_type: str = "f16",
    sample: int = 500,
    data_dir: Path | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    min_agreement: float | None = None,
) -> dict[str, Any]:
    """Write ``out/adapter.gguf`` + ``out/affedge.json`` from the LoRA of ``run``, verified
    on ``base`` (default: the run's base) against the trained model; returns the manifest."""
    from affedge.engines.gguf import GGUFEngine
    from affedge.export.verify import TorchSource, floor_for, sample_records, verification_task
    from affedge.export.verify import verify as verify_artifact

    run, out = Path(run).expanduser(), Path(out).expanduser()
    folders = adapter_folders(run)
    manifest = Manifest.read(run) if has_manifest(run) else None
    if manifest is not None and manifest.kind != ArtifactKind.LLM_HF.value:
        raise ModelError(f"{run}: a {manifest.kind} folder, not a trained LLM run")
    if out_type not in OUT_TYPES:
        raise ModelError(f"adapter type {out_type!r}: choose one of {', '.join(OUT_TYPES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not _is_adapter(out):
        raise ModelError(f"{out}: exists and is not an adapter artifact; choose another --out")
    spec = base or (manifest.base if manifest else None)
    if not spec:
        raise ModelError(f"{run}: no base model recorded; pass --base BASE.gguf")
    base_value, base_path = resolve_base(spec)
    gguf_base = read_base(base_path)
    trained_on = manifest.info.get("architecture") if manifest else None
    arch = gguf_writer.ARCHITECTURES.get(str(trained_on))
    if arch is not None and arch != gguf_base.arch:
        raise ModelError(
            f"{run}: trained on a {trained_on} model; the base {base_path.name} is {gguf_base.arch}"
        )
    adapters = [read_adapter(f) for f in folders]
    plan = plan_lora(adapters, gguf_base)
    source, model = _reference_model(run, manifest, adapters, base_path)
    task, dataset = verification_task(source.tasks)
    records = sample_records(task, dataset, sample, data_dir)
    floor = min_agreement if min_agreement is not None else floor_for(gguf_base.weight_type)
    log(f"writing a rank-{plan.rank} {out_type.upper()} LoRA adapter from {len(folders)} adapters")
    try:
        with staged_dir(out) as folder:
            target = write_lora_gguf(plan, gguf_base, folder / ADAPTER_FILE, out_type, run.name)
            reference = TorchSource(model if model is not None else load_source_model(source))
            log(f"verifying on {base_path.name}: {len(records)} {dataset} items ({task})")
            ref = ModelRef(out.name, target, ArtifactKind.LLM_GGUF_LORA.value, None, base_path)
            with GGUFEngine(ref, threads=threads) as engine:
                report = verify_artifact(
                    reference, engine, f"lora-{out_type}", target, task, dataset, records,
                    LOGIT_ITEMS, floor,
                )  # fmt: skip
            check_floor(report)
            written = write_manifest(
                folder,
                ArtifactKind.LLM_GGUF_LORA,
                source,
                out_type,
                report,
                file=ADAPTER_FILE,
                runtime={"base": base_value},
                adapter={
                    "rank": plan.rank,
                    "alpha": plan.alpha,
                    "tensors": len(plan.tensors) * 2,
                    "targets": sorted({n.split(".")[-2] for n, _, _ in plan.tensors}),
                    "parts": [str(a.folder.relative_to(run)) for a in adapters],
                    "bytes": target.stat().st_size,
                },
                base_model={
                    "file": str(base_path.resolve()),
                    "architecture": gguf_base.arch,
                    "weight_type": gguf_base.weight_type,
                    "bytes": base_path.stat().st_size,
                    "sha256": _sha256(base_path),
                },
            )
    except OSError as exc:
        raise ModelError(
            f"{exc.filename or out}: cannot write the export ({exc.strerror})"
        ) from None
    log(
        f"adapter: {report.size_bytes / 2**20:.2f} MiB, agreement {report.agreement:.1%} "
        f"(floor {report.floor:.0%}), max logit difference {report.max_abs_logit_diff}"
    )
    return written


def _is_adapter(folder: Path) -> bool:
    try:
        return Manifest.read(folder).kind == ArtifactKind.LLM_GGUF_LORA.value
    except ModelError:
        return False
