"""`make bench`: run every benchmark, print their tables, write results/report.md and results/report.png.

    python benchmarks/run.py [--quick | --limit N] [--skip NAME ...] [--out benchmarks/results]

Each ``bench_<NAME>.py`` of this folder runs in its own process; its stdout (markdown)
is echoed and becomes one section of the report, under the command that produced it.
``--limit N`` passes ``--limit N`` to every script (the first N pairs of each set);
``--quick`` is ``--limit 3``, a smoke run whose numbers are not comparable with a
full run. When a script fails the report still holds the others and a line naming
it, and the exit status is 1.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ORDER = ("fuse", "metrics", "register", "masks", "quality", "text", "detect")  # speed first, then quality
QUICK_LIMIT = 3


@dataclass
class Section:
    """One benchmark script's run: what it is, how it was called, what it printed."""

    name: str
    title: str
    command: str
    stdout: str = ""
    stderr: str = ""
    returncode: int = 0


def bench_scripts() -> dict[str, Path]:
    """``{name: bench_<name>.py}`` in report order: ``ORDER`` first, any others after."""
    scripts = {p.stem.removeprefix("bench_"): p for p in HERE.glob("bench_*.py")}
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(scripts.items(), key=lambda item: (rank.get(item[0], len(ORDER)), item[0])))


def run_script(name: str, script: Path, limit: int | None) -> Section:
    """Run one script from the project root, echoing its stdout live and its stderr after it ends."""
    args = [str(script.relative_to(ROOT))] + (["--limit", str(limit)] if limit else [])
    title = ast.get_docstring(ast.parse(script.read_text())).splitlines()[0].rstrip(".")
    section = Section(name, title, shlex.join(["python", *args]))
    print(f"\n## {title}\n\n`{section.command}`\n", flush=True)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines = []
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
        section.returncode = proc.wait()
        err.seek(0)
        section.stdout, section.stderr = "".join(lines), err.read()
    sys.stderr.write(section.stderr)
    return section


def git_commit() -> str | None:
    """The checked-out commit, read from ``.git`` (``None`` outside a clone)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        packed = (git / "packed-refs").read_text().splitlines()
        return next(line.split()[0] for line in packed if line.endswith(" " + ref))
    except (OSError, StopIteration):
        return None


def machine_lines() -> list[str]:
    """Markdown lines naming the CPU, memory, Python, torch and commit."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    cpu = f"{models[0] if models else platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    meminfo = Path("/proc/meminfo")
    memory = next((f"{int(line.split()[1]) / 2**20:.0f} GiB" for line in meminfo.read_text().splitlines()
                   if line.startswith("MemTotal")), "?") if meminfo.exists() else "?"
    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "not installed"
    commit = git_commit()
    return [f"- CPU: {cpu}; memory {memory}", f"- Python {platform.python_version()}, torch {torch}",
            f"- commit: {commit[:12] if commit else 'unknown (not a git clone)'}"]


def markdown_tables(text: str) -> list[tuple[str, list[dict[str, str]]]]:
    """Every markdown table in ``text``: (the last non-empty line before it, rows as {header: cell}, bold removed)."""

    def cells(line: str) -> list[str]:
        return [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]

    tables, caption, lines, i = [], "", text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header, rows, i = cells(lines[i]), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, cells(lines[i]))))
                i += 1
            tables.append((caption, rows))
            continue
        caption = lines[i].strip() or caption
        i += 1
    return tables


def _column(rows: list[dict[str, str]], prefix: str) -> dict[str, float]:
    """``{method: value}`` of the first column whose header starts with ``prefix`` (cells that are numbers)."""
    key = next((k for k in (rows[0] if rows else {}) if k.startswith(prefix)), None)
    out = {}
    for row in rows:
        try:
            out[row["method"]] = float(row.get(key, ""))
        except ValueError:
            continue
    return out


def plot_report(sections: list[Section], path: Path) -> str | None:
    """pairs/s per fusion method (bars, log scale) and TNO quality vs pairs/s; ``None`` or why there is no plot."""
    found = {s.name: markdown_tables(s.stdout) for s in sections}
    speed = next((_column(rows, "pairs/s") for _, rows in found.get("fuse", []) if _column(rows, "pairs/s")), {})
    if not speed:
        return "no plot: the fuse benchmark gave no pairs/s"
    tno = next((rows for caption, rows in found.get("quality", []) if caption.startswith("### TNO")), [])
    metric = next((m for m in ("Qabf", "VIF") if _column(tno, m)), None)
    quality = {m: v for m, v in _column(tno, metric).items() if m in speed} if metric else {}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if quality else 1, figsize=(12 if quality else 6.5, 4.5), squeeze=False)
    bars = axes[0, 0]
    names = list(speed)
    bars.barh(names, [speed[n] for n in names], color=["0.6" if "no fusion" in n else "C0" for n in names])
    bars.set_xscale("log")
    bars.invert_yaxis()
    bars.set_xlabel("pairs/s (log scale)")
    bars.set_title("fuse fuse throughput, MSRS 640x480")
    if quality:
        scatter = axes[0, 1]
        scatter.scatter([speed[m] for m in quality], list(quality.values()), color="C1")
        for method, value in quality.items():
            scatter.annotate(method, (speed[method], value), textcoords="offset points", xytext=(4, 4), fontsize=8)
        scatter.set_xscale("log")
        scatter.set_xlabel("pairs/s (log scale)")
        scatter.set_ylabel(f"{metric} on TNO (higher is better)")
        scatter.set_title(f"quality vs speed: {metric} on TNO")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def assemble_report(sections: list[Section], header: list[str], plot: str | None, plot_note: str | None = None) -> str:
    """The markdown report: title, ``header`` lines, failures, the plot (file name ``plot``), then each section."""
    failed = [s for s in sections if s.returncode]
    lines = ["# fuse benchmarks", "", *header, ""]
    if failed:
        names = ", ".join(f"{s.name} (exit {s.returncode})" for s in failed)
        lines += [f"**Failed:** {names}; their sections show what they printed and the end of their stderr.", ""]
    lines += [f"![throughput and quality vs speed]({plot})" if plot else f"({plot_note})", ""]
    for s in sections:
        lines += [f"## {s.title}", "", f"`{s.command}`", "", s.stdout.strip(), ""]
        if s.returncode:
            tail = "\n".join(s.stderr.strip().splitlines()[-15:])
            lines += [f"Exit status {s.returncode}; stderr ends:", "", "```", tail, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    scripts = bench_scripts()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const=QUICK_LIMIT, dest="limit",
                      help=f"smoke run: --limit {QUICK_LIMIT}")
    size.add_argument("--limit", type=int, help="the first N pairs of each set, passed to every script")
    parser.add_argument("--skip", nargs="+", default=[], choices=list(scripts), metavar="NAME",
                        help=f"benchmarks to leave out: {', '.join(scripts)}")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    sections = [run_script(name, script, args.limit) for name, script in scripts.items() if name not in args.skip]
    command = shlex.join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])
    header = [f"Made by `{command}` on {started:%Y-%m-%d %H:%M} UTC.", "", *machine_lines()]
    if args.limit:
        header += ["", f"Partial run: the first {args.limit} pairs of each set; not comparable with a full run."]
    if args.skip:
        header += ["", f"Skipped: {', '.join(args.skip)}."]
    plot_path = args.out / "report.png"
    plot_note = plot_report(sections, plot_path)
    if plot_note:
        plot_path.unlink(missing_ok=True)  # never leave an older run's figure beside this report
    report = assemble_report(sections, header, None if plot_note else plot_path.name, plot_note)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(report)
    failed = [s.name for s in sections if s.returncode]
    print(f"\nwrote {args.out / 'report.md'}" + ("" if plot_note else f" and {plot_path.name}")
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
