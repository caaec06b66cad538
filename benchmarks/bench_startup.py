"""Start to first record: seconds from launching `fuse fuse` on one pair to its record on stdout.

    python benchmarks/bench_startup.py [--methods max,refinefuse] [--runs N] [--limit N]

Each run is a fresh interpreter (`python -m fuse_cli fuse -m METHOD -o TMP --overwrite`)
fed one MSRS record on stdin, as the first stage of a pipe; next to it, the bare
interpreter and `import fuse_cli.app` (what every command loads before its work).
Wall time is what a user waits; CPU time is the children's user + system time, which
other processes on the machine do not inflate. Medians of ``--runs``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MSRS = ROOT.parent / "shared" / "data" / "msrs"
PAIR = "00004N"


def first_line(command: list[str], stdin: str) -> tuple[float, float]:
    """(wall seconds to the first stdout line, CPU seconds of the whole child) for one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    proc.stdin.write(stdin)
    proc.stdin.close()
    proc.stdout.readline()
    wall = time.perf_counter() - start
    proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"bench_startup: {' '.join(command)} failed (exit {proc.returncode})")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="max,refinefuse")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="at most this many runs (run.py's smoke option)")
    args = parser.parse_args()
    runs = min(args.runs, args.limit or args.runs)
    if not MSRS.is_dir():
        raise SystemExit(f"bench_startup: {MSRS} not found (needs ../shared/data)")
    record = json.dumps({"id": PAIR, "ir": str(MSRS / "ir" / f"{PAIR}.png"), "vis": str(MSRS / "vis" / f"{PAIR}.png")})
    print(f"\nOne MSRS pair (640x480), {runs} runs each (median), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| command | s to first record (wall) | CPU s |\n|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("python -c pass (the interpreter alone)", [sys.executable, "-c", "print()"]),
                 ("python -c 'import fuse_cli.app' (every command's start)",
                  [sys.executable, "-c", "import fuse_cli.app; print()"])]
        cases += [(f"fuse fuse -m {m}", [sys.executable, "-m", "fuse_cli", "fuse", "-m", m, "-o", tmp, "--overwrite"])
                  for m in args.methods.split(",")]
        for label, command in cases:
            timings = [first_line(command, record + "\n") for _ in range(runs)]
            wall = statistics.median(t[0] for t in timings)
            cpu = statistics.median(t[1] for t in timings)
            print(f"| {label} | {wall:.2f} | {cpu:.2f} |", flush=True)
    print(f"\nLoad average at the end {os.getloadavg()[0]:.1f}; the machine's other processes share its CPUs.")


if __name__ == "__main__":
    main()
