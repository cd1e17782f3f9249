"""The summary and the Markdown page of a crash-consistency run (bench/crash_consistency.py),
computed from its logs, so that runs recorded in chunks add up."""

from __future__ import annotations

from collections import Counter
from typing import Any

SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT")
#: Where a run stands when the signal arrives, read off its files: no partial file; the empty
#: partial file a run holds while its model loads; the header; some records; every record
#: (the fsync); the output's temporary file (written, then renamed); the output renamed into
#: place, the partial not yet removed; both done, the process not yet gone.
STAGES = ("start", "lock", "header", "records", "finish", "write", "rename", "done")
#: Something at OUTPUT that is not the whole result; the last resume did not exit 0;
#: OUTPUT.partial left after a completed run; records missing, repeated or out of order; the
#: same records but not the bytes of an uninterrupted run; a disk-full, read-only or lock
#: refusal that is not one line with exit 2.
FAILURES = ("incomplete_at_final_path", "resume_failed", "partial_left", "lost_or_duplicated",
            "bytes_differ", "unclean_error")  # fmt: skip


def summarize(logs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Counts of kills (per signal, stage, mode), trials and failures, from the logs."""
    kills, trials = logs["kill_log"], logs["trial_log"]
    by = Counter((k["signal"], k["stage"]) for k in kills)
    failed = Counter(f["kind"] for f in logs["failure_log"])
    return {
        "kills": len(kills),
        "kills_by_signal_and_stage": {g: {s: by[(g, s)] for s in STAGES} for g in SIGNALS},
        "kills_by_mode": dict(Counter(k["mode"] for k in kills)),
        "kills_of_resumed_runs": sum(k["resumed"] for k in kills),
        "kills_of_negotiate_runs": sum(k.get("command") == "negotiate" for k in kills),
        "exit_codes": {str(c): n for c, n in sorted(Counter(k["exit"] for k in kills).items())},
        "tracebacks_on_kill": sum(k["traceback"] for k in kills),
        "trials": dict(Counter(t["kind"] for t in trials)),
        "litter_tmp_files": sum(t.get("litter", 0) for t in trials),
        "failures": {kind: failed[kind] for kind in FAILURES},
    }


def markdown(report: dict[str, Any]) -> str:
    m, grid, trials = report["machine"], report["kills_by_signal_and_stage"], report["trials"]
    lines = [
        "# Crash consistency under kills, a full disk and a read-only folder",
        "",
        f"`{report['command']}` on {report['date']}: {report['model']}, "
        f"{report['input_lines']}-line input (and a 3-line one); {m['cpu']} "
        f"({m['cores_usable']} usable cores), Python {m['python']}.",
        "",
        f"**{report['kills']} kills** ({report['kills_of_resumed_runs']} of resumed runs, "
        f"{report['kills_of_negotiate_runs']} of `negotiate` runs on the 3-line input) in "
        f"{trials.get('kill', 0)} kill trials, plus {trials.get('disk_full', 0)} "
        f"file-size-limit, {trials.get('read_only', 0)} read-only and "
        f"{trials.get('lock', 0)} two-resume trials. Failures:",
        "",
        "| failure | count |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in report["failures"].items()),
        "",
        "Kills by signal and stage (read off the files just before the signal):",
        "",
        "| signal | " + " | ".join(STAGES) + " | total |",
        "|---|" + "---:|" * (len(STAGES) + 1),
        *(
            f"| {g} | "
            + " | ".join(str(grid[g][s]) for s in STAGES)
            + f" | {sum(grid[g].values())} |"
            for g in SIGNALS
        ),
        "",
        f"Kill moments: {report['kills_by_mode']}; exit codes of killed runs: "
        f"{report['exit_codes']}; killed runs that printed a traceback: "
        f"{report['tracebacks_on_kill']}; temporary output files left after the last resume: "
        f"{report['litter_tmp_files']}.",
    ]
    kinds = Counter(f["kind"] for f in report["failure_log"])
    examples = [f for f in report["failure_log"] if kinds[f["kind"]] > 0][:12]
    if examples:
        lines += [
            "",
            "Failures (first 12):",
            "",
            *(f"- {f['kind']}: {f['what']}" for f in examples),
        ]
    return "\n".join(lines) + "\n"
