"""Chat templates: Jinja source from a model file (GGUF metadata, a manifest), rendered in a
sandbox.

A template comes with the model, and a model may come from anyone, so it is untrusted code.
It runs in Jinja's immutable sandbox (no attribute starting with ``_``, no mutation of lists
or dicts, ranges up to 100,000), which keeps it from reaching Python, plus two limits of our
own against a template that would take the machine instead: ``*`` and ``**`` results are
bounded, and so is the rendered text. Whatever a template does wrong (a syntax error, a
blocked attribute, a type error, ``raise_exception``) ends as one :class:`ModelError` line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from affedge.errors import ModelError

Messages = Sequence[Mapping[str, str]]
#: The longest prompt text a template may render (a real one renders a few hundred chars).
MAX_RENDERED_CHARS = 1_000_000


@cache
def template_sandbox() -> type:
    """The immutable sandbox with ``*`` and ``**`` checked before they run (a class made on
    first use: jinja2 is imported only by runs that render a template)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class TemplateSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "**" and _big(right, 64) and _big(left, 1):
                raise SecurityError("a power that large is not allowed in a chat template")
            for seq, times in ((left, right), (right, left)):
                repeated = operator == "*" and isinstance(seq, str | list | tuple)
                if repeated and isinstance(times, int) and len(seq) * times > MAX_RENDERED_CHARS:
                    raise SecurityError("a repetition that long is not allowed in a chat template")
            return super().call_binop(context, operator, left, right)

    return TemplateSandbox


def _big(value: Any, limit: int) -> bool:
    return isinstance(value, int | float) and abs(value) > limit


def compile_chat_template(source: str) -> Any:
    """Compile a chat template in the sandbox, as the HF chat-template convention does (with
    its ``raise_exception`` and loop controls; no ``strftime_now``: a prompt must not depend
    on the date, or results would change from one day to the next)."""
    env = template_sandbox()(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )

    def raise_exception(message: str) -> None:
        raise ModelError(f"chat template error: {message}")

    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except Exception as exc:  # TemplateSyntaxError, or a blocked constant expression
        raise _template_error(exc) from None


def _template_error(exc: Exception) -> ModelError:
    lines = str(exc).strip().splitlines()
    detail = lines[0][:200] if lines else ""
    return ModelError(f"chat template error: {type(exc).__name__}: {detail}")


class ChatTemplate:
    """A model's chat template with its BOS/EOS strings: one renderer for every backend and
    for training, so a template renders to the same text wherever the model runs."""

    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._compiled = compile_chat_template(source) if source else None

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        """``messages`` through the template; without one, plain ``role: content`` lines."""
        if self._compiled is None:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + "assistant: " if add_generation_prompt else text
        chunks, size = [], 0
        try:
            for chunk in self._compiled.generate(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            ):
                size += len(chunk)
                if size > MAX_RENDERED_CHARS:
                    raise ModelError(
                        f"chat template error: it renders more than {MAX_RENDERED_CHARS:,} "
                        "characters"
                    )
                chunks.append(chunk)
        except ModelError:
            raise
        except Exception as exc:  # the template's code failed: its error, in one line
            raise _template_error(exc) from None
        return "".join(chunks)
