"""Crash consistency of ``affedge classify|score|negotiate -o OUTPUT`` (issue 15, item 2).

Each trial starts a real run (a subprocess, as a user would), kills it with SIGKILL, SIGTERM or
SIGINT at a random moment, then ``--resume``s it (sometimes killing a resume too) until a
resume completes. Kill moments are drawn three ways, so every stage of a run gets kills:

* ``timed``: a delay drawn uniformly over the uninterrupted run's observed duration;
* ``records``: as soon as the partial file holds k records (k drawn over the input), plus up
  to a millisecond (records come in bursts, one per batch window: this lands inside them);
* ``finish``: as soon as the partial file holds every record, plus up to 20 ms (the fsync,
  the output's write and its rename);

and ``tiny`` trials kill a 3-line run late in its life (70-105 % of its duration). The stage
is read off the files just before the signal is sent: ``start`` (no partial file), ``lock``
(the empty partial file a run holds while its model loads), ``header``, ``records``,
``finish`` (every record in the partial file), ``write`` (the output's temporary file being
written, then renamed), ``rename`` (output renamed into place, partial not yet removed: a few
microseconds), ``done`` (both done, the process not yet gone).

Checked after every kill: nothing at the final path unless it is complete (every record once,
in order). After the last resume: exit 0, no partial file left, the same records as an
uninterrupted run (nothing lost, nothing duplicated) and the same bytes. Also: a file-size
limit (RLIMIT_FSIZE, the disk-full path) and a read-only output folder end in one line and exit
2 with nothing at the final path, and a resume then completes; two ``--resume`` runs started
0.5 s apart on one output: one is refused with one line, the output has no duplicates.

    python -m affedge.bench.crash_consistency --kills 200

writes bench/results/crash_consistency.{md,json} (``--append`` adds to an earlier run, so a
long run can be recorded in chunks).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affedge.bench.crash_report import markdown, summarize
from affedge.bench.reporting import stamp, write_report
from affedge.io import partial_path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
MODES = ("timed", "records", "finish", "tiny")


@dataclass(frozen=True)
class Scenario:
    """One kind of run: the command's arguments, the model and the output format."""

    name: str
    args: tuple[str, ...]
    model: str
    suffix: str

    def command(self, src: Path, out: Path, resume: bool = False) -> list[str]:
        run = [*self.args, str(src), "-m", self.model, "-o", str(out), "-q", "--threads", "1"]
        return [sys.executable, "-m", "affedge.cli", *run, *(["--resume"] if resume else [])]


@dataclass
class Reference:
    """An uninterrupted run: its output bytes, its records and how long it took."""

    data: bytes
    records: list[tuple[Any, str]]
    seconds: float
    partial_bytes: int


def _default_signals() -> None:
    """Children get SIGINT and SIGTERM as a foreground run does (a background shell would
    pass SIGINT on ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(cmd: list[str], preexec: Callable[[], None] = _default_signals) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, preexec_fn=preexec
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err.decode("utf-8", "replace")


def records_of(path: Path) -> list[tuple[Any, str]] | None:
    """(id, text) of every record of a finished output, or None if it does not parse."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".csv":
            return [(int(r["id"]), r["text"]) for r in csv.DictReader(io.StringIO(text))]
        lines = text.removesuffix("\n").split("\n")  # not splitlines: U+2028 is no line end
        return [(r["id"], r["text"]) for r in map(json.loads, lines)]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stage(out: Path, total: int) -> str:
    """Where a run on ``out`` stands, read off its files."""
    part = partial_path(out)
    try:
        data = part.read_bytes()
    except FileNotFoundError:
        return "done" if out.exists() else "start"
    if out.exists():
        return "rename"
    if not data:
        return "lock"
    lines = data.count(b"\n")
    if lines <= 1:
        return "header"
    if lines - 1 < total:
        return "records"
    return "write" if _litter(out) else "finish"


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def _clean(out: Path) -> None:
    for path in out.parent.iterdir():
        if path.is_file():
            path.unlink()


def _litter(out: Path) -> int:
    """Temporary files a killed atomic write left beside the output."""
    return sum(1 for p in out.parent.glob(f".{out.name}.*.tmp"))


# ------------------------------------------------------------------------------ trials


class Harness:
    """Trials in one work folder, logged as they go (kills, trials, failures)."""

    def __init__(self, work: Path, seed: int, lines: int, log: Callable[[str], None]) -> None:
        self.work, self.rng, self.log = work, random.Random(seed), log
        self.kills: list[dict[str, Any]] = []
        self.trials: list[dict[str, Any]] = []
        self.failures: list[dict[str, str]] = []
        texts = _texts(lines)
        self.big, self.tiny = work / "input.txt", work / "tiny.txt"
        self.big.write_text("\n".join(texts) + "\n", encoding="utf-8")
        self.tiny.write_text("\n".join(texts[:3]) + "\n", encoding="utf-8")
        self.out_dir = work / "out"
        self.out_dir.mkdir(exist_ok=True)
        self.refs: dict[tuple[str, str], Reference] = {}

    def reference(self, scn: Scenario, src: Path) -> Reference:
        """The uninterrupted run of ``scn`` on ``src`` (once)."""
        key = (scn.name, src.name)
        if key not in self.refs:
            out = self.work / f"ref-{scn.name}-{src.stem}{scn.suffix}"
            largest, started = 0, time.perf_counter()
            proc = _start(scn.command(src, out))
            while proc.poll() is None:
                largest = max(largest, _size(partial_path(out)))
                time.sleep(0.002)
            seconds = time.perf_counter() - started
            code, err = _finish(proc)
            records = records_of(out)
            if code != 0 or records is None:
                raise SystemExit(f"the reference run failed ({code}): {err.strip()}")
            self.refs[key] = Reference(out.read_bytes(), records, seconds, largest)
        return self.refs[key]

    def kill(self, cmd: list[str], out: Path, ref: Reference, mode: str, sig: str) -> bool:
        """Start ``cmd``, wait for the moment ``mode`` picks, send ``sig``, check the final
        path. False if the run ended before the signal.

        A resumed run starts from files that look like a later stage; until it changes
        them, its stage is ``start``."""
        total, rng, part = len(ref.records), self.rng, partial_path(out)
        before = _read(part)
        done = max(0, before.count(b"\n") - 1) if before else 0
        started = time.perf_counter()
        proc = _start(cmd)
        if mode in ("timed", "tiny"):
            low, high = (0.7, 1.05) if mode == "tiny" else (0.0, 1.1)
            wake = started + rng.uniform(low, high) * ref.seconds
            while proc.poll() is None and time.perf_counter() < wake:
                time.sleep(0.001)
        else:
            want = rng.randint(min(done + 1, total), total) if mode == "records" else total
            size = -1
            while proc.poll() is None:
                if _size(part) != size:  # read the file only when it grew
                    size = _size(part)
                    if (_read(part) or b"").count(b"\n") - 1 >= want:
                        break
                time.sleep(0.0005)
            pause = time.perf_counter() + rng.uniform(0, 0.001 if mode == "records" else 0.02)
            while time.perf_counter() < pause:
                pass
        unchanged = before is not None and not out.exists() and _read(part) == before
        at = "start" if unchanged else stage(out, total)
        if proc.poll() is not None:
            _finish(proc)
            return False
        proc.send_signal(SIGNALS[sig])
        code, err = _finish(proc)
        kill = dict(command=cmd[3], signal=sig, mode=mode, stage=at, exit=code)
        kill.update(after=stage(out, total), resumed=before is not None)
        self.kills.append({**kill, "traceback": "Traceback" in err})
        if out.exists() and records_of(out) != ref.records:
            self._fail("incomplete_at_final_path", f"{sig} at {at} ({mode}): incomplete")
        return True

    def _fail(self, kind: str, what: str) -> None:
        self.failures.append({"kind": kind, "what": what})
        self.log(f"FAIL {kind}: {what}")

    def _check_final(self, out: Path, ref: Reference, code: int, err: str, what: str) -> None:
        if code != 0:
            self._fail("resume_failed", f"{what}: exit {code}: {err.strip()[-300:]}")
            return
        if partial_path(out).exists():
            self._fail("partial_left", what)
        records = records_of(out)
        if records != ref.records:
            self._fail("lost_or_duplicated", f"{what}: {len(records or [])} records")
        elif out.read_bytes() != ref.data:
            self._fail("bytes_differ", f"{what}: the same records, other bytes")

    def _check_refusal(self, code: int, err: str, out: Path, ref: Reference, what: str) -> None:
        """Exit 2 with one line and nothing at the final path (or a complete run)."""
        if code == 0 and records_of(out) == ref.records:
            return  # the limit was high enough
        if code != 2 or len(err.strip().splitlines()) != 1 or "Traceback" in err:
            self._fail("unclean_error", f"{what}: exit {code}: {err.strip()[-300:]!r}")
        if out.exists():
            self._fail("incomplete_at_final_path", what)

    def kill_trial(self, scn: Scenario, mode: str, tiny: bool = False) -> None:
        """Kill a run, then resume (killing a resume too, now and then) until one completes;
        ``tiny``: on the 3-line input whatever the mode (negotiation is slow)."""
        src = self.tiny if tiny or mode == "tiny" else self.big
        ref = self.reference(scn, src)
        out = self.out_dir / f"out{scn.suffix}"
        _clean(out)
        first = len(self.kills)
        for attempt in range(4):
            if attempt and self.rng.random() < 0.7:
                break
            sig = self.rng.choice(list(SIGNALS))
            self.kill(scn.command(src, out, resume=attempt > 0), out, ref, mode, sig)
            mode = mode if mode == "tiny" else self.rng.choice(MODES[:3])
        code, err = _finish(_start(scn.command(src, out, resume=True)))
        what = f"{scn.name}: " + ", ".join(
            f"{k['signal']}@{k['stage']}" for k in self.kills[first:]
        )
        self._check_final(out, ref, code, err, what)
        self.trials.append({"kind": "kill", "scenario": scn.name, "litter": _litter(out)})

    def disk_full_trial(self, scn: Scenario) -> None:
        """A file-size limit somewhere between nothing and the whole partial file."""
        ref = self.reference(scn, self.big)
        out = self.out_dir / f"out{scn.suffix}"
        _clean(out)
        limit = self.rng.randint(0, ref.partial_bytes)

        def limited() -> None:
            _default_signals()
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a core dump
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        code, err = _finish(_start(scn.command(self.big, out), limited))
        self._check_refusal(code, err, out, ref, f"{scn.name}: file-size limit {limit} B")
        self.trials.append(
            dict(
                kind="disk_full",
                scenario=scn.name,
                limit=limit,
                exit=code,
                message=err.strip()[-200:],
            )
        )
        code, err = _finish(_start(scn.command(self.big, out, resume=True)))
        self._check_final(out, ref, code, err, f"{scn.name}: resume after a {limit} B limit")

    def read_only_trial(self, scn: Scenario, at_finish: bool) -> None:
        """A read-only output folder: from the start, or made read-only while a killed run
        with every record waits for its resume (whose final write then fails)."""
        ref = self.reference(scn, self.big)
        folder = self.out_dir / "ro"
        folder.mkdir(exist_ok=True)
        out = folder / f"out{scn.suffix}"
        _clean(out)
        if at_finish:
            self.kill(scn.command(self.big, out), out, ref, "finish", "SIGKILL")
        before = sorted(p.name for p in folder.iterdir())
        folder.chmod(0o555)
        try:
            code, err = _finish(_start(scn.command(self.big, out, resume=at_finish), _read_only))
        finally:
            folder.chmod(0o755)
        what = f"{scn.name}: read-only folder ({'resume' if at_finish else 'new run'})"
        self._check_refusal(code, err, out, ref, what)
        if sorted(p.name for p in folder.iterdir()) != before:
            self._fail("unclean_error", f"{what}: the folder changed")
        self.trials.append(
            dict(
                kind="read_only",
                scenario=scn.name,
                at_finish=at_finish,
                exit=code,
                message=err.strip()[-200:],
            )
        )
        code, err = _finish(_start(scn.command(self.big, out, resume=True)))
        self._check_final(out, ref, code, err, f"{what}, then writable")

    def lock_trial(self, scn: Scenario) -> None:
        """Two ``--resume`` runs of one interrupted output, started 0.5 s apart."""
        ref = self.reference(scn, self.big)
        out = self.out_dir / f"out{scn.suffix}"
        _clean(out)
        self.kill(scn.command(self.big, out), out, ref, "records", "SIGKILL")
        first = _start(scn.command(self.big, out, resume=True))
        time.sleep(0.5)
        second = _start(scn.command(self.big, out, resume=True))
        (c1, e1), (c2, e2) = _finish(first), _finish(second)
        refused = e2 if c2 else e1
        one_line = len(refused.strip().splitlines()) == 1 and "Traceback" not in e1 + e2
        already = (c1, c2) == (0, 0) and "already complete" in e2  # the first was that fast
        if not ((sorted([c1, c2]) == [0, 2] and one_line) or already):
            self._fail("unclean_error", f"two resumes: exits {c1}, {c2}: {(e1 + e2).strip()!r}")
        self._check_final(out, ref, 0, "", "two resumes 0.5 s apart")
        self.trials.append(
            dict(kind="lock", scenario=scn.name, exits=[c1, c2], refusal=refused.strip()[-200:])
        )


def _read_only() -> None:
    """Keep a read-only folder read-only for this child even as root: drop the capability
    that lets root write anywhere from the bounding set, which limits the exec'd program."""
    _default_signals()
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_capbset_drop, cap_dac_override = 24, 1
        if libc.prctl(pr_capbset_drop, cap_dac_override, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot drop CAP_DAC_OVERRIDE")


def _texts(lines: int) -> list[str]:
    """SST-2 test sentences (from $AFFEDGE_DATA), else examples/reviews.txt repeated."""
    try:
        from affedge.datasets import load_dataset

        texts = [r.text for r in load_dataset("sst2", "test", limit=lines)]
    except Exception:  # no dataset folder: the shipped examples
        sample = (REPO / "examples" / "reviews.txt").read_text(encoding="utf-8").splitlines()
        texts = [t for t in sample if t.strip()]
    return [texts[i % len(texts)] for i in range(lines)]


# ------------------------------------------------------------------------------ driver


def scenarios(model: str, negotiate_model: str = "smollm2-135m-instruct") -> dict[str, Scenario]:
    return {
        "classify": Scenario("classify", ("classify", "--task", "sentiment"), model, ".jsonl"),
        "score": Scenario("score", ("score", "--task", "valence"), model, ".csv"),
        "negotiate": Scenario(
            "negotiate", ("negotiate", "--task", "sentiment"), negotiate_model, ".jsonl"
        ),
    }


def run(
    kills: int,
    seed: int = 0,
    model: str = "minilm-affect-int8",
    lines: int = 300,
    negotiate_kills: int = 0,
    disk_full: int = 4,
    read_only: int = 2,
    lock: int = 1,
    work: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
    minutes: float | None = None,
) -> dict[str, Any]:
    """At least ``kills`` kills of classify/score runs and ``negotiate_kills`` of negotiate
    runs (3-line input), then the other trials; the logs and their summary. ``minutes``
    ends the kill trials early (a chunk of a long run on a busy machine)."""
    deadline = time.monotonic() + minutes * 60 if minutes else float("inf")
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="affedge-crash-")) if work is None else work
    try:
        h = Harness(work, seed, lines, log)
        scns = scenarios(model)
        plain = [scns["classify"], scns["score"]]
        for _ in range(3 * kills):
            if len(h.kills) >= kills or time.monotonic() > deadline:
                break
            h.kill_trial(h.rng.choice(plain), h.rng.choice(MODES))
            log(f"{len(h.kills)}/{kills} kills, {len(h.failures)} failures")
        start = len(h.kills)
        for _ in range(3 * negotiate_kills):
            if len(h.kills) - start >= negotiate_kills:
                break
            h.kill_trial(scns["negotiate"], h.rng.choice(["tiny", "timed"]), tiny=True)
        for i in range(disk_full):
            h.disk_full_trial(plain[i % 2])
        for i in range(read_only):
            h.read_only_trial(plain[i % 2], at_finish=bool(i % 2))
        for _ in range(lock):
            h.lock_trial(scns["classify"])
        refs = {f"{s}/{f}": round(r.seconds, 2) for (s, f), r in h.refs.items()}
        logs = {"kill_log": h.kills, "trial_log": h.trials, "failure_log": h.failures}
        meta = dict(model=model, input_lines=lines, seed=seed, reference_seconds=refs)
        return {**meta, **summarize(logs), **logs}
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="kills of classify/score runs")
    parser.add_argument("--negotiate-kills", type=int, default=0, help="SmolLM2 GGUF: slow")
    parser.add_argument("--model", default="minilm-affect-int8")
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--disk-full", type=int, default=4)
    parser.add_argument("--read-only", type=int, default=2)
    parser.add_argument("--lock", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "crash_consistency")
    parser.add_argument("--append", action="store_true", help="add to an earlier --out run")
    parser.add_argument("--minutes", type=float, help="stop the kill trials after this long")
    args = parser.parse_args(argv)
    report = run(
        args.kills,
        args.seed,
        args.model,
        args.lines,
        args.negotiate_kills,
        args.disk_full,
        args.read_only,
        args.lock,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        minutes=args.minutes,
    )
    report = {**stamp("crash_consistency", list(argv) if argv is not None else None), **report}
    previous = args.out.with_suffix(".json")
    if args.append and previous.exists():
        old = json.loads(previous.read_text())
        logs = {k: old[k] + report[k] for k in ("kill_log", "trial_log", "failure_log")}
        chunks = f"{old['command']} ; {report['command']}"
        report = {**report, **summarize(logs), **logs, "command": chunks}
        report["seed"] = f"{old['seed']},{report['seed']}"
    write_report(args.out, report, markdown(report))
    sys.exit(1 if any(report["failures"].values()) else 0)


if __name__ == "__main__":
    main()
