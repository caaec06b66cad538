"""Issue 16: records stream through pipes, records files work from anywhere, quick start-up,
a progress bar with a total, and summary warnings for folders that do not pair up."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from conftest import fuse_cli, records_of

# --- 1. records leave a stage as soon as their pair is done ------------------------------

#: Writes one record, then holds the second back until the file "go" appears (or gives up
#: after 30 s, leaving "gave-up"), then writes the second and ends.
SLOW_PRODUCER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    first, second, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    print(first, flush=True)
    deadline = time.monotonic() + 30
    while not (folder / "go").exists():
        if time.monotonic() > deadline:
            (folder / "gave-up").touch()
            break
        time.sleep(0.1)
    print(second, flush=True)
""")


@pytest.mark.parametrize("stage", [["fuse", "-m", "mean"], ["score", "-f", "json", "--metrics", "EN"]],
                         ids=["fuse", "score-json"])
def test_a_slow_producers_first_record_comes_out_before_its_input_ends(stage, synthetic_pairs, tmp_path):
    records = [json.dumps({"id": pair_id, "ir": str(synthetic_pairs / "ir" / f"{pair_id}.png"),
                           "vis": str(synthetic_pairs / "vis" / f"{pair_id}.png"),
                           "fused": str(synthetic_pairs / "vis" / f"{pair_id}.png")})
               for pair_id in ("scene_00", "scene_01")]
    producer = subprocess.Popen([sys.executable, "-c", SLOW_PRODUCER, *records, str(tmp_path)], stdout=subprocess.PIPE)
    out = ["-o", str(tmp_path / "out")] if stage[0] == "fuse" else []
    consumer = subprocess.Popen([sys.executable, "-m", "fuse_cli", *stage, *out], stdin=producer.stdout,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    producer.stdout.close()
    first = consumer.stdout.readline()
    held_back = not (tmp_path / "gave-up").exists()
    (tmp_path / "go").touch()
    rest = consumer.stdout.read()
    consumer.wait(60)
    producer.wait(60)
    assert held_back, "the first record came out only once the input ended"
    assert json.loads(first)["id"] == "scene_00"
    assert consumer.returncode == 0, consumer.stderr.read()
    ids = [row["id"] for row in records_of(rest)]
    assert ids == (["scene_01"] if stage[0] == "fuse" else ["scene_01", "mean"])


def test_a_partial_batch_goes_when_the_input_stalls():
    from fuse_cli.runner import available_batches

    def slow():
        yield {"id": "a"}
        time.sleep(1)
        yield {"id": "b"}

    started = time.monotonic()
    batches = available_batches(slow(), size=4)
    assert next(batches) == [{"id": "a"}] and time.monotonic() - started < 0.9
    assert list(batches) == [[{"id": "b"}]]
    ready = [{"id": i} for i in range(6)]
    assert list(available_batches(iter(ready), size=4)) == [ready[:4], ready[4:]]


# --- 2. a records file works from any directory ------------------------------------------


def test_records_file_paths_resolve_against_its_folder_and_dash_reads_stdin(synthetic_pairs, tmp_path):
    listing = tmp_path / "listing"
    shutil.copytree(synthetic_pairs, listing)
    relative = [json.dumps({"id": f"scene_0{i}", "ir": f"ir/scene_0{i}.png", "vis": f"vis/scene_0{i}.png"}) + "\n"
                for i in range(2)]
    (listing / "pairs.jsonl").write_text("".join(relative))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = fuse_cli("fuse", "-m", "mean", "-o", "out", "-r", listing / "pairs.jsonl", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert [Path(r["ir"]) for r in records_of(done.stdout)] == [listing / "ir/scene_00.png", listing / "ir/scene_01.png"]
    assert (elsewhere / "out/scene_01.png").is_file()
    piped = fuse_cli("fuse", "-m", "mean", "-o", "out2", "-r", "-", input="".join(relative), cwd=listing)
    assert piped.returncode == 0, piped.stderr
    assert len(records_of(piped.stdout)) == 2


# --- 3. start-up imports only what the command needs -------------------------------------

NETWORK_MODULES = {"stages.methods.learned", "stages.nets.refinefuse", "stages.nets.dfh_base", "stages.nets.tard",
                   "stages.nets.tesg", "stages.nets.textdfh", "stages.nets.mgfusion"}


def _imported(*args: str, cwd: Path | None = None) -> set[str]:
    """The modules ``fuse ARGS`` has imported when it exits."""
    code = ("import sys\nfrom fuse_cli.app import run\nsys.argv = ['fuse', *sys.argv[1:]]\n"
            "try:\n    run()\nexcept SystemExit:\n    pass\nsys.stderr.write('\\nMODULES ' + ' '.join(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd)
    return set(done.stderr.rsplit("MODULES ", 1)[1].split())


def test_help_version_and_pairs_import_neither_torch_nor_scipy(synthetic_pairs):
    for args in (["--help"], ["--version"], ["pairs", synthetic_pairs / "ir", synthetic_pairs / "vis"]):
        modules = _imported(*args)
        assert not {"torch", "scipy"} & modules, args


def test_list_methods_and_classical_methods_import_neither_torch_nor_a_network(synthetic_pairs, tmp_path):
    listed = _imported("fuse", "--list-methods")
    assert "torch" not in listed and not NETWORK_MODULES & listed
    for method in ("laplacian", "max"):  # per-image OpenCV filters, and a whole-batch numpy rule
        fused = _imported("fuse", "-m", method, "-q", "-o", tmp_path / method, "--ir", synthetic_pairs / "ir",
                          "--vis", synthetic_pairs / "vis")
        assert (tmp_path / method / "scene_00.png").is_file()
        assert not {"torch", "kornia", "scipy"} & fused and not NETWORK_MODULES & fused, method


def test_every_listed_method_registers_its_factory():
    from stages.methods.registry import list_methods

    for info in list_methods():
        assert callable(info.factory), info.name


# --- 6. the progress bar shows the total when it is known --------------------------------


def _stderr_on_a_terminal(*args: str) -> str:
    """Run ``fuse ARGS`` with stderr on a pseudo-terminal; what it wrote there."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "fuse_cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=child, stdin=subprocess.DEVNULL)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(60)
    os.close(main)
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_shows_total_and_percent_for_folders_and_records_files(synthetic_pairs, tmp_path):
    shown = _stderr_on_a_terminal("fuse", "-m", "mean", "-o", tmp_path / "a", "--ir", synthetic_pairs / "ir",
                                  "--vis", synthetic_pairs / "vis")
    assert "100%" in shown and "4/4" in shown, shown
    listed = tmp_path / "pairs.jsonl"
    listed.write_text(fuse_cli("pairs", synthetic_pairs / "ir", synthetic_pairs / "vis").stdout)
    shown = _stderr_on_a_terminal("fuse", "-m", "mean", "-o", tmp_path / "b", "-r", listed, "--shard", "1/3")
    assert "100%" in shown and "2/2" in shown, shown


# --- 7. warnings that help -------------------------------------------------------------


def test_folders_that_do_not_pair_up_get_one_summary_line(synthetic_pairs, tmp_path):
    shutil.copytree(synthetic_pairs, tmp_path, dirs_exist_ok=True)
    for n in range(5):
        shutil.copy(tmp_path / "vis/scene_00.png", tmp_path / f"vis/extra_{n}.png")
    done = fuse_cli("pairs", tmp_path / "ir", tmp_path / "vis")
    assert done.returncode == 1 and len(records_of(done.stdout)) == 4
    (line,) = done.stderr.splitlines()
    assert str(tmp_path / "ir") in line and "5 of the 9" in line and "5 pair(s) dropped" in line


def test_score_names_the_fused_folder_lacking_a_file_and_fails(synthetic_pairs, tmp_path):
    fused = tmp_path / "laplacian"
    fuse_cli("fuse", "-m", "laplacian", "-q", "-o", fused, "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis")
    (fused / "scene_02.png").unlink()
    done = fuse_cli("score", "--metrics", "EN", "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis",
                    "--fused", fused)
    assert done.returncode == 1
    assert f"{fused}: lacks 1 of the 4 images" in done.stderr and "scene_02" in done.stderr
    assert str(synthetic_pairs) not in done.stderr  # the IR and VIS files are not blamed
    assert [line.split(",")[0] for line in done.stdout.splitlines()[1:]] == ["scene_00", "scene_01", "scene_03", "mean"]


@pytest.mark.parametrize("command", [["fuse", "-m", "mean"], ["score"], ["register", "-m", "ecc"],
                                     ["mask"], ["caption"]])
def test_empty_input_folders_are_reported_by_every_stage(command, tmp_path):
    (tmp_path / "ir").mkdir()
    (tmp_path / "vis").mkdir()
    out = [] if command == ["score"] else ["-o", tmp_path / "out"]
    done = fuse_cli(*command, *out, "--ir", tmp_path / "ir", "--vis", tmp_path / "vis")
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path / 'ir'} and {tmp_path / 'vis'}: no image files" in done.stderr
