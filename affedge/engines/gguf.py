"""GGUF models on llama.cpp (llama-cpp-python).

Classification reads label log-probabilities at the answer position instead of generating:

* the task's *head* (system message, instruction, options: everything before the item) is
  evaluated once and its KV cache kept; each item then evaluates only its own tokens;
* a label is scored as its full token continuation, ``log p(t1) + log p(t2 | t1) + ...``;
  labels whose first token is enough are read from the one forward pass of the item, longer
  ones cost one short extra decode each; when one label's tokens are a prefix of another's,
  every label ends in the end-of-turn token so that the shorter one is a complete answer;
* scores are the expected value of the 0-9 answer-token distribution of one forward pass.

Decoding goes through llama-cpp-python's ``_ctx``/``_batch`` (its own thin wrappers over
``llama_decode`` and the KV memory API) because the high-level ``Llama.eval`` neither keeps
a reusable prefix nor returns logits without ``logits_all`` (which costs n_ctx x n_vocab
floats). The tested range of llama-cpp-python is pinned in pyproject.toml.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from affedge.engines.base import Engine, LabelResult, ScoreResult
from affedge.errors import ModelError
from affedge.models import GGUF_MAGIC, ModelRef
from affedge.prompts import ITEM_SLOT, PromptSpec, prompt_spec
from affedge.records import Record
from affedge.tasks import Task

DEFAULT_N_CTX = 2048
#: Tokens a negotiation keeps free after the item for its deductions, verdicts and turns.
CHAT_RESERVE = 512


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max()
    return x - np.log(np.exp(x).sum())


@dataclass
class _Prepared:
    """A prompt (messages with the item slot, and the answers) tokenized for this model."""

    head: list[int]
    suffix: list[int]
    answers: list[list[int]]
    first_only: bool  # every answer is decided by its first token

    @property
    def max_answer(self) -> int:
        return max(len(a) for a in self.answers)


class GGUFEngine(Engine):
    """Label and score prediction with a GGUF model on llama.cpp."""

    def __init__(
        self,
        ref: ModelRef,
        threads: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        context_turns: int | None = None,
    ) -> None:
        from llama_cpp import Llama

        _check_gguf_file(ref)
        self.name = ref.name
        self.path = ref.path
        self.threads = threads or os.cpu_count() or 1
        self.context_turns = context_turns
        try:
            self._llm = Llama(
                model_path=str(ref.path),
                n_ctx=n_ctx,
                n_batch=512,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                logits_all=False,
                verbose=False,
                seed=0,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(
                f"{ref.path}: llama.cpp cannot load this GGUF model (truncated or corrupt "
                f"file, or an unsupported architecture): {exc}"
            ) from None
        self.n_ctx = self._llm.n_ctx()
        self.n_vocab = self._llm.n_vocab()
        self._eot = self._llm.token_eos()
        self._prepared: dict[tuple, _Prepared] = {}
        self._split: dict[tuple, tuple[list[int], list[int]]] = {}
        self._cached_head: list[int] | None = None
        self._glue: tuple[list[int], list[int]] | None = None
        template = self._llm.metadata.get("tokenizer.chat_template")
        self._template = _compile_template(template) if template else None

    # ----------------------------------------------------------------- prompt plumbing

    def _render(self, messages: Sequence[dict[str, str]]) -> str:
        """The chat template applied to ``messages``, ending at the assistant's turn."""
        if self._template is None:
            # No chat template in the file: plain "role: content" turns.
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + "assistant: "
        bos = self._llm.detokenize([self._llm.token_bos()], special=True).decode(
            "utf-8", errors="ignore"
        )
        eos = self._llm.detokenize([self._eot], special=True).decode("utf-8", errors="ignore")
        return self._template.render(
            messages=list(messages),
            add_generation_prompt=True,
            bos_token=bos,
            eos_token=eos,
        )

    def _tokens(self, text: str, special: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def _split_prompt(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Tokens before and after :data:`ITEM_SLOT` in the rendered ``messages`` (cached)."""
        key = tuple(tuple(sorted(m.items())) for m in messages)
        if key not in self._split:
            before, sep, after = self._render(messages).partition(ITEM_SLOT)
            if not sep:
                raise ModelError(f"{self.path}: the chat template dropped the user message")
            head = self._tokens(before, special=True)
            add_bos = self._llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
            bos = self._llm.token_bos()
            if add_bos and bos >= 0 and (not head or head[0] != bos):
                head = [bos, *head]
            self._split[key] = (head, self._tokens(after, special=True))
        return self._split[key]

    def _prepare(
        self, messages: Sequence[dict[str, str]], answers: Sequence[str], digits: bool = False
    ) -> _Prepared:
        """Tokenize a prompt whose user message holds :data:`ITEM_SLOT`, and its answers."""
        key = (tuple(tuple(sorted(m.items())) for m in messages), tuple(answers))
        if key in self._prepared:
            return self._prepared[key]
        head, suffix = self._split_prompt(messages)
        tokens, first_only = self._answer_tokens(answers)
        if digits and any(len(a) != 1 for a in tokens):
            raise ModelError(f"{self.path}: digits 0-9 are not single tokens in this model")
        prepared = _Prepared(head, suffix, tokens, first_only)
        self._prepared[key] = prepared
        return prepared

    def _answer_tokens(self, answers: Sequence[str]) -> tuple[list[list[int]], bool]:
        """Answers as token continuations, and whether their first tokens decide them."""
        tokens = [self._tokens(a, special=False) for a in answers]
        if any(not a for a in tokens):
            raise ModelError(f"an answer tokenizes to nothing: {list(answers)}")
        if _has_prefix_pair(tokens):
            tokens = [[*a, self._eot] for a in tokens]
        first_only = all(len(a) == 1 for a in tokens) and len({a[0] for a in tokens}) == len(tokens)
        return tokens, first_only

    def _task_prompt(
        self, task: Task, labels: Sequence[str] | None
    ) -> tuple[PromptSpec, _Prepared]:
        spec = prompt_spec(task, labels)
        return spec, self._prepare(spec.messages, spec.answers, digits=task.kind == "score")

    def _body(self, spec: PromptSpec, record: Record) -> str:
        turns = self.context_turns
        return spec.body(record) if turns is None else spec.body(record, turns)

    # ------------------------------------------------------------------ decoding

    def _decode(self, tokens: Sequence[int], n_past: int, all_logits: bool) -> np.ndarray:
        """Evaluate ``tokens`` at position ``n_past``; logits of the last or of every token."""
        ctx, batch = self._llm._ctx, self._llm._batch
        rows: list[np.ndarray] = []
        step = self._llm.n_batch
        for start in range(0, len(tokens), step):
            chunk = list(tokens[start : start + step])
            last_chunk = start + step >= len(tokens)
            batch.set_batch(chunk, n_past=n_past + start, logits_all=all_logits)
            try:
                ctx.decode(batch)
            except RuntimeError as exc:
                raise ModelError(f"{self.path}: llama.cpp decode failed: {exc}") from None
            if all_logits:
                out = np.ctypeslib.as_array(ctx.get_logits(), shape=(len(chunk), self.n_vocab))
                rows.append(out.copy())
            elif last_chunk:
                out = np.ctypeslib.as_array(ctx.get_logits_ith(-1), shape=(self.n_vocab,))
                rows.append(out.copy()[None, :])
        return np.concatenate(rows, axis=0)

    def _forget_after(self, n_keep: int) -> None:
        self._llm._ctx.kv_cache_seq_rm(-1, n_keep, -1)

    def _ensure_head(self, head: list[int]) -> None:
        """Make the KV cache hold exactly ``head`` (re-using it when it already does)."""
        if self._cached_head == head:
            self._forget_after(len(head))
            return
        self._llm._ctx.kv_cache_clear()
        self._cached_head = None
        self._decode(head, 0, all_logits=False)
        self._cached_head = head

    def _item_tokens(
        self, head: list[int], suffix: list[int], reserve: int, body_text: str
    ) -> tuple[list[int], bool]:
        """The item's tokens (body + suffix), cut in the middle if they would leave fewer than
        ``reserve`` tokens of the window free after them."""
        body = self._tokens(body_text, special=False)
        room = self.n_ctx - len(head) - len(suffix) - reserve
        if room < 16:
            raise ModelError(f"{self.path}: context window of {self.n_ctx} tokens is too small")
        truncated = len(body) > room
        if truncated:
            keep_start = room // 2
            body = body[:keep_start] + body[len(body) - (room - keep_start) :]
        return body + suffix, truncated

    def _answer_logprobs(self, prep: _Prepared, body_text: str) -> tuple[np.ndarray, bool]:
        """log p(answer | prompt) for every answer of ``prep`` (one row per answer)."""
        self._ensure_head(prep.head)
        item, truncated = self._item_tokens(prep.head, prep.suffix, prep.max_answer + 1, body_text)
        start = len(prep.head)
        first = _log_softmax(self._decode(item, start, all_logits=False)[-1])
        scores = self._continuations(first, prep.answers, prep.first_only, start + len(item))
        return scores, truncated

    def _continuations(
        self, first: np.ndarray, answers: list[list[int]], first_only: bool, pos: int
    ) -> np.ndarray:
        """Total log-probability of each answer continuing the sequence at ``pos``, given the
        log-probabilities ``first`` of the token there; the KV cache is left ending at ``pos``."""
        if first_only:
            return np.array([first[a[0]] for a in answers])
        scores = np.empty(len(answers))
        for i, answer in enumerate(answers):
            total = first[answer[0]]
            if len(answer) > 1:
                logits = self._decode(answer[:-1], pos, all_logits=True)
                for j, tok in enumerate(answer[1:]):
                    total += _log_softmax(logits[j])[tok]
                self._forget_after(pos)
            scores[i] = total
        return scores

    # ------------------------------------------------------------------ interface

    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        spec, prep = self._task_prompt(task, labels)
        for record in records:
            yield self._label_result(prep, spec.answers, self._body(spec, record))

    def _label_result(self, prep: _Prepared, answers: Sequence[str], body_text: str) -> LabelResult:
        logp, truncated = self._answer_logprobs(prep, body_text)
        probs = np.exp(logp - logp.max())
        probs /= probs.sum()
        return LabelResult(
            probs={a: float(p) for a, p in zip(answers, probs, strict=True)}, truncated=truncated
        )

    def choose(
        self, messages: Sequence[dict[str, str]], body: str, answers: Sequence[str]
    ) -> LabelResult:
        """Score ``answers`` as continuations of ``messages`` with ``body`` in the item slot.

        The part of the prompt before :data:`ITEM_SLOT` is cached like a task's head.
        """
        return self._label_result(self._prepare(messages, answers), answers, body)

    def score(self, records: Iterable[Record], task: Task) -> Iterator[ScoreResult]:
        spec, prep = self._task_prompt(task, None)
        values = np.arange(len(prep.answers), dtype=np.float64) / (len(prep.answers) - 1)
        for record in records:
            logp, truncated = self._answer_logprobs(prep, self._body(spec, record))
            dist = np.exp(logp - logp.max())
            dist /= dist.sum()
            yield ScoreResult(
                score=float(dist @ values),
                distribution=tuple(float(p) for p in dist),
                truncated=truncated,
            )

    def generate(
        self, messages: Sequence[dict[str, str]], max_tokens: int = 32, stop: Sequence[str] = ()
    ) -> str:
        prompt = self._tokens(self._render(messages), special=True)
        self._cached_head = None  # create_completion rewrites the KV cache
        self._llm.n_tokens = 0
        out = self._llm.create_completion(
            prompt, max_tokens=max_tokens, temperature=0.0, stop=list(stop) or None
        )
        self._llm._ctx.kv_cache_clear()
        self._llm.n_tokens = 0
        return out["choices"][0]["text"]  # type: ignore[index]

    def chat(self, messages: Sequence[dict[str, str]], body: str) -> ChatState:
        """Start a conversation: ``messages`` (with :data:`ITEM_SLOT` in the last user message,
        whose head is cached across items) with ``body`` in the slot, at the assistant's turn."""
        head, suffix = self._split_prompt(messages)
        self._ensure_head(head)
        item, truncated = self._item_tokens(head, suffix, CHAT_RESERVE, body)
        logits = self._decode(item, len(head), all_logits=False)[-1]
        return ChatState(self, len(head) + len(item), logits, truncated)

    def _turn_glue(self) -> tuple[list[int], list[int]]:
        """Tokens that end an assistant turn and open a user turn, and that end a user turn
        and open the assistant's, read off the chat template with sentinel contents."""
        if self._glue is None:
            a, u = "\x00A\x00", "\x00U\x00"
            msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": a}]
            text = self._render([*msgs, {"role": "user", "content": u}])
            between = text.split(a, 1)[1].split(u, 1)[0]
            after = text.split(u, 1)[1]
            self._glue = (self._tokens(between, special=True), self._tokens(after, special=True))
        return self._glue

    def prompt_tokens(self, task: Task, record: Record, labels: Sequence[str] | None = None):
        """The full prompt of ``record`` as the model sees it (head + item), for baselines."""
        spec, prep = self._task_prompt(task, labels)
        item, _ = self._item_tokens(
            prep.head, prep.suffix, prep.max_answer + 1, self._body(spec, record)
        )
        return prep.head + item

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None  # type: ignore[assignment]


class ChatState:
    """A conversation growing in the KV cache: generate, score answers, add turns.

    Used by SANM negotiation: the generator and discriminator roles alternate as turns of one
    sequence, so each turn costs only its own tokens. Text that comes from the analysed item or
    from the model is tokenized without special tokens; only template glue is parsed.
    """

    def __init__(self, engine: GGUFEngine, pos: int, logits: np.ndarray, truncated: bool):
        self.engine = engine
        self.pos = pos
        self.logits = logits
        self.truncated = truncated

    def _append(self, tokens: Sequence[int]) -> None:
        if not tokens:
            return
        if self.pos + len(tokens) >= self.engine.n_ctx:
            raise ModelError(f"{self.engine.path}: the conversation outgrew the context window")
        self.logits = self.engine._decode(tokens, self.pos, all_logits=False)[-1]
        self.pos += len(tokens)

    def add(self, text: str) -> None:
        """Append ``text`` to the current turn (never parsed for special tokens)."""
        self._append(self.engine._tokens(text, special=False))

    def choose(self, answers: Sequence[str], allowed: Sequence[str] | None = None) -> LabelResult:
        """Probabilities of ``answers`` (restricted to ``allowed``) continuing here."""
        options = [a for a in answers if allowed is None or a in allowed]
        tokens, first_only = self.engine._answer_tokens(options)
        logp = self.engine._continuations(_log_softmax(self.logits), tokens, first_only, self.pos)
        probs = np.exp(logp - logp.max())
        probs /= probs.sum()
        return LabelResult({a: float(p) for a, p in zip(options, probs, strict=True)})

    def generate(self, max_tokens: int) -> str:
        """Greedy continuation of the current turn, up to a newline or the end of the turn."""
        llm = self.engine._llm
        stop = {self.engine._eot, llm.token_eos()}
        out: list[int] = []
        for _ in range(max_tokens):
            tok = int(np.argmax(self.logits))
            if tok in stop:
                break
            piece = llm.detokenize([tok]).decode("utf-8", errors="ignore")
            if "\n" in piece and out:
                break
            out.append(tok)
            self._append([tok])
        return llm.detokenize(out).decode("utf-8", errors="replace").strip()

    def user_turn(self, text: str) -> None:
        """Close the assistant's turn, add a user turn with ``text``, open the assistant's."""
        close, open_ = self.engine._turn_glue()
        self._append(close)
        self.add(text)
        self._append(open_)


def _has_prefix_pair(answers: list[list[int]]) -> bool:
    for i, a in enumerate(answers):
        for j, b in enumerate(answers):
            if i != j and len(a) <= len(b) and b[: len(a)] == a:
                return True
    return False


def _compile_template(source: str):
    """Compile a GGUF chat template in a sandbox, as the HF chat-template convention does."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise ModelError(f"chat template error: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def _check_gguf_file(ref: ModelRef) -> None:
    """Cheap checks before llama.cpp sees the file: it exists, is GGUF, is not truncated."""
    path = ref.path
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file ({exc.strerror})") from None
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path}: not a GGUF model (no GGUF magic bytes)")
    if size < 1024:
        raise ModelError(f"{path}: GGUF file is truncated ({size} bytes)")
