"""Write-then-rename: the one way affedge puts a file or a folder at its final path.

A reader (or a crashed run) sees either nothing or the complete result at ``path``; a partial
write lives under a hidden temporary name in the same folder (same file system, so the final
``os.replace`` is atomic) and is removed on any failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Read once at import (setting it to read it is not thread-safe).
_UMASK = _read_umask()


def atomic_write(path: Path, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """Write text (bytes with ``binary``) to ``path`` through a temporary file in its folder
    and an atomic rename."""
    with atomic_path(path) as tmp, _open(tmp, binary) as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def _open(path: Path, binary: bool) -> IO[Any]:
    return path.open("wb") if binary else path.open("w", encoding="utf-8", newline="")


def atomic_write_text(path: Path, text: str) -> None:
    """``path.write_text(text)``, atomically."""
    atomic_write(path, lambda fh: fh.write(text))


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file path beside ``path``; renamed onto ``path`` when the block succeeds.

    For writers that need a file name rather than a stream (llama.cpp's quantizer, gguf-py's
    writer, safetensors).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o666 & ~_UMASK)  # as a plain open() would create it, not mkstemp's 0600
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A hidden scratch folder beside ``final`` that replaces ``final`` when the block succeeds.

    On any failure (or Ctrl-C) the scratch folder is removed and ``final`` is left as it was.
    When two processes stage the same ``final``, the last to finish wins, whole.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A unique name: two processes staging the same folder (a shared cache) never collide.
    partial = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    partial.chmod(0o777 & ~_UMASK)  # mkdtemp's 0700 would hide a model from other users
    try:
        yield partial
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
