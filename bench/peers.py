"""The systems a benchmark compares: affedge's engines and the peers users would pick instead.

Every system is an :class:`~affedge.engines.Engine`, so :func:`affedge.evaluate.evaluate` and
the speed harness treat affedge and its peers alike. A system is named by a *spec*:

* ``affedge:MODEL`` - affedge's own engine for MODEL (built-in name or path);
* ``vader``, ``textblob`` - the lexicon tools (sentiment and polarity only);
* ``transformers:MODEL`` - transformers/torch fp32 inference of MODEL's weights as users run
  it: batches of :data:`USER_BATCH` in input order, each padded to its longest item (a
  ``pipeline(..., batch_size=32)`` call); a GGUF file is dequantized by
  :func:`affedge.train.hf_base.load_causal_lm`; an ONNX encoder uses its torch source folder
  (``source``);
* ``transformers-sorted:MODEL`` - the same weights in their best form: the whole input sorted
  by token length first, so batches pad little (results in input order);
* ``generation:MODEL`` - llama-cpp-python ``create_completion`` on the same GGUF and the same
  prompt tokens, greedy, the answer text matched to a label.

Only the transformers peer imports torch; nothing here is imported by the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from affedge.artifact import ArtifactKind, Manifest, has_manifest
from affedge.engines import Engine, LabelResult, ScoreResult, open_engine
from affedge.errors import AffedgeError, ModelError
from affedge.models import ModelRef, resolve_model
from affedge.records import Record
from affedge.tasks import Task

REPO = Path(__file__).resolve().parent.parent

#: Torch source folders of built-in ONNX models, used when no ``--source`` is given
#: (runs/ is not shipped: the peer is skipped where the folder is missing).
KNOWN_SOURCES: dict[str, Path] = {"minilm-affect-int8": REPO / "runs" / "encoder-main"}

PEERS = ("vader", "textblob", "transformers", "transformers-sorted", "generation")
#: Batch size of the transformers peers (a pipeline's batch_size as users set it).
USER_BATCH = 32
#: Records the sorted peer reads ahead and sorts (more than any bench input).
SORT_WINDOW = 4096
TORCH_PEERS = ("transformers", "transformers-sorted")
LEXICON_LABELS = ("positive", "negative", "neutral")
UNPARSED = "<unparsed>"


def parse_answer(text: str, labels: Sequence[str]) -> str:
    """The label a generated answer names (the first label found), or ``<unparsed>``."""
    answer = text.strip().lower()
    for label in sorted(labels, key=len, reverse=True):
        if answer.startswith(label):
            return label
    for label in labels:
        if label in answer:
            return label
    return UNPARSED


def _one_hot(label: str, labels: Sequence[str]) -> LabelResult:
    """A hard decision as probabilities (an unparsed answer gets a uniform distribution)."""
    if label not in labels:
        return LabelResult({lab: 1.0 / len(labels) for lab in labels})
    return LabelResult({lab: float(lab == label) for lab in labels})


class _NoScores(Engine):
    """Peers that only classify."""

    #: Whether ``classify`` returns real probabilities (ECE is meaningless otherwise).
    probabilistic = False

    def score(self, records: Iterable[Record], task: Task) -> Iterator[ScoreResult]:
        raise ModelError(f"{self.name} cannot score intensities")

    def generate(
        self, messages: Sequence[dict[str, str]], max_tokens: int = 32, stop: Sequence[str] = ()
    ) -> str:
        raise ModelError(f"{self.name} cannot generate text")


class LexiconEngine(_NoScores):
    """VADER or TextBlob polarity, thresholded into the task's sentiment labels.

    VADER: compound >= 0.05 positive, <= -0.05 negative, else neutral (its authors'
    thresholds). TextBlob: polarity > 0 positive, < 0 negative, 0 neutral. Without a neutral
    label (SST-2) the sign decides, 0 counting as positive.
    """

    def __init__(self, kind: str) -> None:
        self.name = kind
        if kind == "vader":
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            analyzer = SentimentIntensityAnalyzer()
            self._polarity = lambda text: analyzer.polarity_scores(text)["compound"]
            self._band = 0.05
        elif kind == "textblob":
            from textblob import TextBlob

            self._polarity = lambda text: TextBlob(text).sentiment.polarity
            self._band = 0.0
        else:
            raise ModelError(f"unknown lexicon peer {kind!r}")

    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        names = tuple(labels or task.labels)
        if task.name not in ("sentiment", "polarity") or not set(names) <= set(LEXICON_LABELS):
            raise ModelError(f"{self.name} only labels sentiment polarity, not {task.name}")
        neutral = "neutral" in names
        for record in records:
            value = self._polarity(record.text)
            if neutral and abs(value) <= self._band:
                label = "neutral"
            else:
                label = "positive" if value >= 0 else "negative"
            yield _one_hot(label, names)


class GenerationEngine(_NoScores):
    """Generation-based classification on llama-cpp-python: the engine's own prompt tokens,
    ``create_completion`` (greedy, ``max_tokens``), the answer matched to a label.

    llama-cpp-python keeps the longest common prompt prefix between calls, so this baseline
    reuses the instruction head's KV cache just as affedge's label scoring does.
    """

    def __init__(self, ref: ModelRef, threads: int | None, max_tokens: int = 4) -> None:
        from affedge.engines.gguf import GGUFEngine

        self._engine = GGUFEngine(ref, threads=threads)
        self.name = f"generation:{ref.name}"
        self.max_tokens = max_tokens
        self.generated_tokens = 0

    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        names = tuple(labels or task.labels)
        llm = self._engine._llm
        for record in records:
            prompt = self._engine.prompt_tokens(task, record, labels)
            out = llm.create_completion(prompt, max_tokens=self.max_tokens, temperature=0.0)
            self.generated_tokens += int(out["usage"]["completion_tokens"])  # type: ignore[index]
            yield _one_hot(parse_answer(out["choices"][0]["text"], names), names)  # type: ignore[index]

    def close(self) -> None:
        self._engine.close()


class TorchCausalEngine(_NoScores):
    """Label-logit classification with transformers fp32 weights of a decoder: prompts built
    by the one prompt builder on affedge's engine's own tokenizer (the exact ids that engine
    feeds), scored by the project's torch scorer (:class:`affedge.train.llm_eval.TorchScorer`):
    ``log p(answer tokens | prompt)``.

    Batched with left padding; each item is a full forward pass over its whole prompt (no
    prefix KV cache shared between items: how transformers is used for classification).
    ``sort``: length-sorted batches (the whole input), else input order.
    """

    probabilistic = True

    def __init__(
        self,
        ref: ModelRef,
        threads: int | None,
        weights: Path | None = None,
        batch_size: int = USER_BATCH,
        sort: bool = False,
    ) -> None:
        import torch

        from affedge.engines.decoder import DecoderEngine
        from affedge.train.hf_base import load_causal_lm
        from affedge.train.llm_eval import TorchScorer

        if threads:
            torch.set_num_threads(threads)
        self._tokenizer_engine = open_engine(ref, threads=1)
        if not isinstance(self._tokenizer_engine, DecoderEngine):
            raise ModelError(f"{ref.name}: the transformers peer needs a decoder model")
        self._model, _ = load_causal_lm(weights or ref.path)
        self._model.eval()
        self.name = f"{'transformers-sorted' if sort else 'transformers'}:{ref.name}"
        self.batch_size = batch_size
        config = self._model.config
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        eng = self._tokenizer_engine
        self._scorer = TorchScorer(
            self._model,
            eng.tokenizer,
            name=self.name,
            window=eng.n_ctx,
            context_turns=eng.context_turns,
            batch_size=batch_size,
            pad_id=self.pad_id,
            window_batches=max(1, SORT_WINDOW // batch_size) if sort else 1,
        )

    def prompts(self, records: Sequence[Record], task: Task, labels: Sequence[str] | None):
        """Prompt ids of ``records`` and the tokenized answers (what affedge's engine feeds)."""
        ids = [self._scorer.build(task, r, labels).ids for r in records]
        return ids, self._scorer.prompts.task_prompt(task, labels)[1]

    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        return self._scorer.classify(records, task, labels)

    def close(self) -> None:
        self._tokenizer_engine.close()


def _torch_encoder(ref: ModelRef, source: Path, threads: int | None, sort: bool) -> Engine:
    """The ONNX encoder's torch source (same weights, fp32) on the torch-encoder backend, in
    batches of :data:`USER_BATCH`: in input order (a window of one batch), or ``sort``ed by
    length over the whole input."""
    kind = "transformers-sorted" if sort else "transformers"
    engine = open_engine(ModelRef.from_path(source, name=f"{kind}:{ref.name}"), threads)
    engine.batch_size = USER_BATCH  # type: ignore[attr-defined]
    engine.window = SORT_WINDOW if sort else USER_BATCH  # type: ignore[attr-defined]
    return engine


def torch_source(ref: ModelRef, sources: dict[str, Path] | None = None) -> Path | None:
    """The torch folder holding the same weights as ONNX model ``ref``, if known."""
    sources = sources or {}
    for key in (ref.name, str(ref.path)):
        if key in sources:
            return Path(sources[key])
    if ref.manifest is not None:
        recorded = ref.manifest.info.get("source")
        if isinstance(recorded, dict):  # decoder exports: {"path", "hf_folder", ...}
            recorded = recorded.get("hf_folder") or recorded.get("path")
        if isinstance(recorded, str) and (
            has_manifest(Path(recorded)) or (Path(recorded) / "config.json").is_file()
        ):
            return Path(recorded)  # a trained encoder folder or a HF decoder folder
    known = KNOWN_SOURCES.get(ref.name)
    return known if known is not None and known.is_dir() else None


def open_system(
    spec: str, threads: int | None = None, sources: dict[str, Path] | None = None
) -> Engine:
    """Load the system named by ``spec`` (see the module docstring)."""
    kind, _, model = spec.partition(":")
    if kind in ("vader", "textblob") and not model:
        return LexiconEngine(kind)
    if not model:
        raise AffedgeError(f"system {spec!r} needs a model: {kind}:MODEL")
    ref = resolve_model(model)
    if kind == "affedge":
        return open_engine(ref, threads=threads)
    if kind == "generation":
        if ref.kind != ArtifactKind.LLM_GGUF.value:
            raise ModelError(f"{spec}: generation peer needs a GGUF model")
        return GenerationEngine(ref, threads)
    if kind in TORCH_PEERS:
        sort = kind == "transformers-sorted"
        if ref.kind == ArtifactKind.LLM_GGUF.value:
            return TorchCausalEngine(ref, threads, sort=sort)
        source = torch_source(ref, sources)
        if source is None:
            raise ModelError(f"{spec}: no torch source folder known: pass --source NAME=PATH")
        source_ref = ModelRef.from_path(source)
        if source_ref.kind == ArtifactKind.ENCODER_TORCH.value:
            return _torch_encoder(ref, source, threads, sort)
        return TorchCausalEngine(ref, threads, weights=source, sort=sort)
    raise AffedgeError(f"unknown system {spec!r}: affedge:M, vader, textblob, transformers:M, ...")


def peer_specs(model: str, fmt: str, peers: Sequence[str], has_source: bool) -> list[str]:
    """The peer systems of ``model`` (``ModelRef.format``) among ``peers`` that apply to it."""
    gguf = fmt == "gguf"
    out = []
    for peer in peers:
        if peer in ("vader", "textblob"):
            continue  # model-independent: benchmarked once per run
        if peer == "generation" and not gguf:
            continue
        if peer in TORCH_PEERS and not gguf and not has_source:
            continue
        out.append(f"{peer}:{model}")
    return out


# ------------------------------------------------------------ forward-pass accounting


def forward_tokens(
    engine: Engine, records: Sequence[Record], task: Task, labels: Sequence[str] | None = None
) -> int | None:
    """Tokens one pass of ``engine`` over ``records`` runs through the model.

    Encoders: the real (unpadded) tokens of each item. affedge decoders: the item's own
    tokens after the cached instruction head. transformers decoders: the whole prompt (no
    head cache). Generation: the item's tokens plus the generated ones (counted while it
    runs). Lexicon peers: None (no model tokens).
    """
    if isinstance(engine, LexiconEngine):
        return None
    if isinstance(engine, GenerationEngine):
        inner = engine._engine
        head = len(inner.answer_tokens(task, labels).head)
        return sum(len(inner.prompt_tokens(task, r, labels)) - head for r in records)
    if isinstance(engine, TorchCausalEngine):
        prompts, _ = engine.prompts(records, task, labels)
        return sum(len(p) for p in prompts)
    tokenizer = getattr(engine, "_tokenizer", None)
    if tokenizer is not None and hasattr(engine, "heads"):  # multi-task encoder, ONNX or torch
        total = 0
        for start in range(0, len(records), 64):
            inputs, _ = tokenizer.encode(records[start : start + 64], engine.context_turns)
            total += int(inputs["attention_mask"].sum())
        return total
    if hasattr(engine, "prompt_tokens") and hasattr(engine, "answer_tokens"):
        head = len(engine.answer_tokens(task, labels).head)
        return sum(len(engine.prompt_tokens(task, r, labels)) - head for r in records)
    return None


def _encoder_config_params(folder: Path, manifest: Manifest) -> int | None:
    """Matmul weights of a BERT-style encoder from its config: L x (4 d^2 + 2 d ff)."""
    for candidate in (folder / "config.json", Path(manifest.base or "") / "config.json"):
        if candidate.is_file():
            cfg = json.loads(candidate.read_text())
            d, ff, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
            return int(layers * (4 * d * d + 2 * d * ff))
    return None


def forward_params(engine: Engine) -> int | None:
    """Parameters a token passes through in the forward pass (for 2 x params x tokens FLOPs).

    Embedding tables are left out (a lookup, no multiply-adds), and so is a decoder's output
    projection (llama.cpp and our transformers peer compute it for the last position only).
    GGUF: llama.cpp's parameter count minus the token-embedding table. transformers decoders:
    every parameter outside ``embed_tokens`` and ``lm_head``. Encoders: the matmul weights of
    the transformer layers from the model config, L x (4 d^2 + 2 d ff). Lexicons: None.
    """
    if isinstance(engine, LexiconEngine):
        return None
    inner = engine._engine if isinstance(engine, GenerationEngine) else engine
    llm = getattr(inner, "_llm", None)
    if llm is not None:
        import llama_cpp

        total = int(llama_cpp.llama_model_n_params(llm.model))
        return total - llm.n_vocab() * llm.n_embd()
    if isinstance(engine, TorchCausalEngine):
        return sum(
            p.numel()
            for name, p in engine._model.named_parameters()
            if "embed_tokens" not in name and "lm_head" not in name
        )
    manifest = getattr(engine, "manifest", None)
    if isinstance(manifest, Manifest) and manifest.heads:
        return _encoder_config_params(Path(engine.path).parent, manifest) or (
            _encoder_config_params(Path(engine.path), manifest)
        )
    return None
