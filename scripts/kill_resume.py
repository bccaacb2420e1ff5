"""SIGKILL at random moments, then resume, until the command finishes; compare with an uninterrupted run.

Out of CI (minutes of training): ``python scripts/kill_resume.py run|experiment|whatif --work DIR``.
The command's own flags (all but ``--out``) follow ``--``. For each command the script runs it once whole into
``DIR/<command>-whole`` (or reuses that folder), then into ``DIR/<command>-cut``: it starts the same
command, SIGKILLs its process group after a random delay (seeded), starts it again (``run`` with
``--resume``; ``experiment`` and ``whatif`` resume by themselves) and repeats ``--kills`` times, then
lets it finish. It then compares what both folders hold:

- ``run``: the report log (every round once, equal but for wall-clock fields) and the final
  adapters (sha256 of every tensor);
- ``experiment``: ``results.json`` (wall-clock fields dropped), ``summary.csv``, and every run's
  report log and final adapters;
- ``whatif``: ``results.csv`` and ``results.json`` (``solve_time_s`` dropped).

It prints one line per kill and a verdict, and exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

WALL = {"wall_time_s", "wall_s", "measured_step_s", "solve_time_s"}


def _drop_wall(value):
    if isinstance(value, dict):
        return {k: _drop_wall(v) for k, v in value.items() if k not in WALL}
    if isinstance(value, list):
        return [_drop_wall(v) for v in value]
    return value


def _reports(folder: Path) -> list:
    path = folder / "reports.jsonl"
    return [_drop_wall(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _adapters(folder: Path) -> dict[str, str]:
    from safetensors.numpy import load_file

    manifest = json.loads((folder / "checkpoint.json").read_text())
    tensors = load_file(folder / manifest["tensor_file"])
    return {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in sorted(tensors.items())}


def _csv_rows(path: Path, drop: set[str]) -> list[dict]:
    """The CSV's rows without the wall-clock columns (``wall_time_s``, ``wall_time_s_mean``, ...)."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in row.items() if not any(k.startswith(name) for name in drop)} for row in rows]


def compare(command: str, whole: Path, cut: Path) -> list[str]:
    """What differs between the uninterrupted and the killed-and-resumed folders (empty: nothing)."""
    diffs = []
    if command == "run":
        run_dirs = [(whole, cut)]
    elif command == "experiment":
        run_dirs = [
            (p.parent, cut / p.parent.relative_to(whole)) for p in sorted(whole.glob("runs/*/*/run/checkpoint.json"))
        ]
        if _drop_wall(json.loads((whole / "results.json").read_text())) != _drop_wall(
            json.loads((cut / "results.json").read_text())
        ):
            diffs.append("results.json differs")
        if _csv_rows(whole / "summary.csv", WALL) != _csv_rows(cut / "summary.csv", WALL):
            diffs.append("summary.csv differs")
    else:
        run_dirs = []
        if _csv_rows(whole / "results.csv", WALL) != _csv_rows(cut / "results.csv", WALL):
            diffs.append("results.csv differs")
        if _drop_wall(json.loads((whole / "results.json").read_text())) != _drop_wall(
            json.loads((cut / "results.json").read_text())
        ):
            diffs.append("results.json differs")
    for a, b in run_dirs:
        ra, rb = _reports(a), _reports(b)
        if [r["global_round"] for r in rb] != list(range(1, len(rb) + 1)):
            diffs.append(f"{b}: rounds {[r['global_round'] for r in rb]}")
        if ra != rb:
            diffs.append(f"{b}: reports differ")
        if _adapters(a) != _adapters(b):
            diffs.append(f"{b}: final adapters differ")
    return diffs


def _start(argv: list[str], log) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_and_resume(
    argv: list[str], resume_flag: list[str], kills: int, delays: tuple[float, float], rng, log_path: Path
):
    """Start, SIGKILL after a random delay, restart; ``kills`` times; then run to the end. Returns the kill log."""
    events = []
    with log_path.open("a") as log:
        for attempt in range(kills + 1):
            args = argv + (resume_flag if attempt > 0 else [])
            started = time.monotonic()
            process = _start(args, log)
            if attempt < kills:
                delay = rng.uniform(*delays)
                try:
                    code = process.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)  # the process group this script started
                    process.wait()
                    events.append(f"kill {attempt + 1}: SIGKILL after {delay:.1f} s")
                    continue
                events.append(
                    f"kill {attempt + 1}: not needed, it ended with {code} after {time.monotonic() - started:.1f} s"
                )
                if code != 0:
                    raise SystemExit(f"the command failed with exit {code}; see {log_path}")
                return events
            code = process.wait()
            events.append(f"final: exit {code} after {time.monotonic() - started:.1f} s")
            if code != 0:
                raise SystemExit(f"the command failed with exit {code}; see {log_path}")
    return events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("run", "experiment", "whatif"))
    parser.add_argument("--work", type=Path, required=True, help="folder for the whole and the cut outputs")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--min-delay", type=float, default=2.0)
    parser.add_argument("--max-delay", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hierfedlora", default=str(Path(sys.executable).parent / "hierfedlora"))
    argv = sys.argv[1:]
    cut_at = argv.index("--") if "--" in argv else len(argv)
    ns = parser.parse_args(argv[:cut_at])
    extra = argv[cut_at + 1 :]  # after --: the command's own flags except --out
    ns.work.mkdir(parents=True, exist_ok=True)
    whole, cut = ns.work / f"{ns.command}-whole", ns.work / f"{ns.command}-cut"
    base = [ns.hierfedlora, ns.command, *extra, "--out"]
    log_path = ns.work / f"{ns.command}.log"
    if not whole.exists():
        started = time.monotonic()
        subprocess.run([*base, str(whole)], check=True, stdout=log_path.open("a"), stderr=subprocess.STDOUT)
        print(f"{ns.command}: uninterrupted run {time.monotonic() - started:.1f} s", flush=True)
    rng = random.Random(ns.seed)
    resume = ["--resume"] if ns.command == "run" else []
    events = kill_and_resume([*base, str(cut)], resume, ns.kills, (ns.min_delay, ns.max_delay), rng, log_path)
    for line in events:
        print(f"{ns.command}: {line}", flush=True)
    diffs = compare(ns.command, whole, cut)
    print(f"{ns.command}: " + ("identical to the uninterrupted run" if not diffs else "DIFFERS: " + "; ".join(diffs)))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
