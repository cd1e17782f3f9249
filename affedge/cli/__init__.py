"""The `affedge` command line: the runtime's commands, plus commands from plugin packages.

The runtime's own commands (classify, score, negotiate, models/tasks/datasets/backends list)
live in this package. Everything else (train, export, eval, bench) comes in through the
``affedge.commands`` entry-point group, as simonw/llm's ``register_commands`` does: each entry
point names a ``typer.Typer``, imported only when its command runs or help lists it, so
`affedge classify` never imports train/, export/ or bench/. Another package can add commands
the same way.

Every user error ends as one line on stderr and exit status 2 (see :mod:`affedge.errors`);
Ctrl-C and SIGTERM end with status 130 and leave ``--output``'s ``.partial`` for ``--resume``.
"""

from __future__ import annotations

import signal
import sys
from functools import cache
from typing import Any

import typer
from typer.core import TyperGroup

from affedge.cli import annotate, catalog
from affedge.cli.options import stderr
from affedge.errors import AffedgeError

COMMANDS_GROUP = "affedge.commands"


@cache
def plugin_commands() -> dict[str, Any]:
    """Entry points of the ``affedge.commands`` group by command name (not yet imported)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}


class PluginGroup(TyperGroup):
    """The top-level group: built-in commands first, then plugin commands loaded on demand."""

    def list_commands(self, ctx: Any) -> list[str]:
        own = super().list_commands(ctx)
        return own + [name for name in plugin_commands() if name not in own]

    def invoke(self, ctx: Any) -> Any:
        """Run the command. Ctrl-C that the command does not handle itself (while a model
        or onnxruntime is still being imported, say) becomes the click abort :func:`main`
        ends with one line and exit 130: typer would turn it into a silent exit 130."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _cli_exceptions()[2]() from None

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        ep = plugin_commands().get(cmd_name)
        if ep is None:
            return None
        try:
            plugin = ep.load()
        except ImportError as exc:  # a broken plugin must not take `affedge --help` down
            return _broken(cmd_name, ep.value, exc)
        command = typer.main.get_command(plugin) if isinstance(plugin, typer.Typer) else plugin
        command.name = cmd_name
        return command


def _broken(name: str, target: str, exc: Exception) -> Any:
    """A stand-in command that says why plugin command ``name`` could not be loaded."""
    message = f"the {name!r} command ({target}) cannot be loaded: {exc}"
    stub = typer.Typer(add_completion=False)

    @stub.command(name=name, help=f"(unavailable: {exc})", context_settings={
        "ignore_unknown_options": True, "allow_extra_args": True
    })  # fmt: skip
    def unavailable() -> None:
        raise AffedgeError(message)

    return typer.main.get_command(stub)


app = typer.Typer(
    name="affedge",
    cls=PluginGroup,
    help="Fast, private, offline affect annotation with small language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
annotate.register(app)
catalog.register(app)


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cli_exceptions() -> tuple[type[Exception], type[BaseException], type[BaseException]]:
    """Usage-error, exit and abort exception types of whichever click typer runs on
    (typer >= 0.20 vendors its own copy of click under ``typer._click``)."""
    try:
        from typer._click import ClickException
        from typer.exceptions import Abort, Exit
    except ImportError:  # older typer on the click package
        from click.exceptions import Abort, ClickException, Exit
    return ClickException, Exit, Abort


def main() -> None:
    """Entry point: user errors become one line and exit 2, never a traceback."""
    click_error, click_exit, click_abort = _cli_exceptions()
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code instead of exiting
    except AffedgeError as exc:
        stderr(f"affedge: error: {exc}")
        sys.exit(2)
    except click_exit as exc:
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except click_error as exc:
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except (KeyboardInterrupt, click_abort):
        stderr("affedge: interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
