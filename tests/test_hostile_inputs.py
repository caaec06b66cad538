"""Hostile and clumsy input (issue 15): every stage that writes per-pair files, fed a table of bad records.

For each stage the same input holds good pairs around records whose ids try to
leave the output folder or cannot name a file, a duplicate id and 1x1 / 2x2
pairs. Whatever they hold: nothing is written outside ``-o``, every other pair
completes, each bad pair gets exactly one error line, the exit status is 1.
The later tests cover provenance-checked skips, duplicate ids under threads,
stale temporaries and records read from any readable path.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, fuse_cli, records_of
from stages.core.images import atomic_file, read_image, temporary_path, write_image
from stages.core.provenance import read_recipe
from stages.core.records import MAX_ID_BYTES, id_problem

#: Ids that must be refused, one pair each: they leave -o, name a sub-folder, or cannot be a file name.
BAD_IDS = ["../escape", "../../../x/escape2", "ABSOLUTE", "sub/dir", "back\\slash", "", "nul\x00id", "x" * 300,
           "line\nbreak", ".hidden", "..", None, True]

#: Stages that write per-pair files, as a user runs them (no downloads: random CLIP and YOLO).
STAGES = {
    "fuse": ["fuse", "-m", "laplacian"],
    "fuse-tesg": ["fuse", "-m", "tesg"],
    "caption": ["caption", "--backend", "advisor"],
    "mask": ["mask", "--backend", "salient"],
    "register": ["register", "-m", "ecc"],
    "encode": ["encode", "--model", "ViT-S-32", "--pretrained", "none"],
    "detect": ["detect", "--model", "yolov8n.yaml", "--image", "vis", "--imgsz", "64"],
}


def _snapshot(root: Path, skip: Path) -> dict[str, float | None]:
    """Every file (with its modification time) and folder under ``root``, but ``skip`` and what it holds."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.lstat().st_mtime for p in root.rglob("*")
            if p != skip and skip not in p.parents}


@pytest.fixture()
def hostile(synthetic_pairs, tmp_path):
    """(working folder 3 levels deep, records text, ids expected to complete, ids expected to fail)."""
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    pair = lambda i: {"ir": str(synthetic_pairs / f"ir/scene_0{i}.png"), "vis": str(synthetic_pairs / f"vis/scene_0{i}.png")}
    tiny = {}
    for size in (1, 2):
        for key in ("ir", "vis"):
            write_image(work / f"tiny{size}_{key}.png", np.full((size, size), 0.5, np.float32))
        tiny[size] = {"ir": str(work / f"tiny{size}_ir.png"), "vis": str(work / f"tiny{size}_vis.png")}
    rows = [{"id": "scene_00", **pair(0)}]
    for bad in BAD_IDS:
        rows.append({"id": str(tmp_path / "abs" / "escape3") if bad == "ABSOLUTE" else bad, **pair(2)})
    rows += [{"id": "tiny1", **tiny[1]}, {"id": "tiny2", **tiny[2]}, {"id": "scene_00", **pair(3)},  # a duplicate id
             {"id": "scene_01", **pair(1)}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    return work, text


@pytest.mark.parametrize("stage", list(STAGES))
def test_hostile_records_stay_inside_out_and_the_rest_completes(stage, hostile, tmp_path):
    work, text = hostile
    out = work / "out"
    before = _snapshot(tmp_path, out)
    done = fuse_cli(*STAGES[stage], "-o", "out", "--device", "cpu", input=text, cwd=work)
    assert done.returncode == 1, done.stderr
    assert _snapshot(tmp_path, out) == before, "a file was written outside -o"
    assert not (tmp_path / "abs").exists() and not (tmp_path / "x").exists()
    records = records_of(done.stdout)
    assert len(records) == len(text.splitlines())  # every record comes out, in input order
    ok = [r["id"] for r in records if "error" not in r]
    assert ok[0] == "scene_00" and ok[-1] == "scene_01"  # the pairs around the hostile ones complete
    failed = [r for r in records if "error" in r]
    bad = failed[: len(BAD_IDS)]
    assert [r["id"] for r in bad] == [r["id"] for r in records[1 : 1 + len(BAD_IDS)]]
    assert all("unusable id" in r["error"] for r in bad)
    assert "duplicate id" in records[-2]["error"]
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == len(failed)  # one line per failed pair, a newline in an id included
    assert "Traceback" not in done.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    assert {p.name.split(".")[0] for p in out.iterdir()} <= set(ok)  # files of completed pairs only


def test_tiny_pairs_get_advice_and_tesg_fuses_them(hostile):
    """1x1 and 2x2 pairs used to abort the whole run (np.quantile of nothing in the advisor)."""
    work, text = hostile
    tiny = "".join(line + "\n" for line in text.splitlines() if '"tiny' in line)
    for stage in ("caption", "fuse-tesg"):
        done = fuse_cli(*STAGES[stage], "-o", f"out-{stage}", "--device", "cpu", input=tiny, cwd=work)
        assert done.returncode == 0, done.stderr
        assert [r["id"] for r in records_of(done.stdout)] == ["tiny1", "tiny2"]


def test_id_rule():
    assert id_problem("FLIR_00006") is None and id_problem(7) is None and id_problem("ünïcode id") is None
    assert id_problem("x" * MAX_ID_BYTES) is None and id_problem("é" * (MAX_ID_BYTES // 2 + 1))
    for bad in BAD_IDS:
        assert id_problem(bad if bad != "ABSOLUTE" else "/abs/path"), bad


def test_detect_export_refuses_ids_that_leave_out(synthetic_pairs, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("person\n")
    rows = [{"id": i, "fused": str(synthetic_pairs / "vis/scene_00.png")} for i in ("scene_00", "../escape", "scene_01")]
    for pair in ("scene_00", "scene_01", "escape"):
        (labels / f"{pair}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    records = tmp_path / "r.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = fuse_cli("detect", "export", "-r", records, "--labels", labels, "-o", tmp_path / "a" / "ds", "--split", "1")
    assert done.returncode == 1 and done.stderr.count("unusable id") == 1
    assert not (tmp_path / "a" / "ds" / "images" / "escape.png").exists()
    assert sorted(p.name for p in (tmp_path / "a" / "ds" / "images" / "train").iterdir()) == ["scene_00.png", "scene_01.png"]


# --- provenance: skip only what the same recipe made from the same inputs --------------------------


def _records(pairs: Path, ids=("scene_00", "scene_01")) -> str:
    return "".join(json.dumps({"id": i, "ir": str(pairs / f"ir/{i}.png"), "vis": str(pairs / f"vis/{i}.png")}) + "\n"
                   for i in ids)


def test_an_output_of_another_method_is_refused_not_skipped(synthetic_pairs, tmp_path):
    out, text = tmp_path / "cmp" / "max", _records(synthetic_pairs)
    assert fuse_cli("fuse", "-m", "max", "-o", out, input=text).returncode == 0
    made = {p: p.read_bytes() for p in out.iterdir()}
    other = fuse_cli("fuse", "-m", "laplacian", "-o", out, input=text)
    assert other.returncode == 1
    lines = other.stderr.splitlines()
    assert len(lines) == 2 and all("max" in line and "laplacian" in line and "--overwrite" in line for line in lines)
    assert all(str(out / f"{i}.png") in other.stderr for i in ("scene_00", "scene_01"))
    assert all("error" in r and "fused" not in r for r in records_of(other.stdout))
    assert {p: p.read_bytes() for p in out.iterdir()} == made  # untouched
    # fuse score labels the images with the method their files name, whatever the records claim
    claimed = "".join(json.dumps({**r, "fused": str(out / f"{r['id']}.png"), "method": "laplacian"}) + "\n"
                      for r in records_of(text))
    scored = fuse_cli("score", "--metrics", "EN", "-f", "json", input=claimed)
    assert {row["method"] for row in records_of(scored.stdout)} == {"max"}
    # the same recipe skips; --overwrite replaces, and the file then names the new method
    same = fuse_cli("fuse", "-m", "max", "-o", out, "-v", input=text)
    assert same.returncode == 0 and same.stderr.count("skipped") == 2 and {p: p.read_bytes() for p in out.iterdir()} == made
    assert fuse_cli("fuse", "-m", "laplacian", "-o", out, "--overwrite", input=text).returncode == 0
    assert read_recipe(out / "scene_00.png")["method"] == "laplacian"


def test_changed_inputs_options_and_foreign_files_are_refused(synthetic_pairs, tmp_path):
    pairs = tmp_path / "pairs"
    shutil.copytree(synthetic_pairs, pairs)
    out, text = tmp_path / "out", _records(pairs)
    assert fuse_cli("fuse", "-m", "mean", "-o", out, input=text).returncode == 0
    options = fuse_cli("fuse", "-m", "mean", "--bit-depth", "16", "-o", out, input=text)
    assert options.returncode == 1 and options.stderr.count("bit_depth 8, not 16") == 2
    vis = read_image(pairs / "vis/scene_01.png")
    write_image(pairs / "vis/scene_01.png", 1 - vis)  # the same path, other pixels
    changed = fuse_cli("fuse", "-m", "mean", "-o", out, input=text)
    assert changed.returncode == 1 and "scene_01.png" in changed.stderr and "other inputs (vis differs)" in changed.stderr
    assert changed.stderr.count("error") == 1  # scene_00 is still what this recipe makes: skipped
    write_image(out / "scene_00.png", vis)  # as another program would write it: no recipe
    refused = fuse_cli("fuse", "-m", "mean", "-o", out, input=_records(pairs, ["scene_00"]))
    assert refused.returncode == 1 and "carries no recipe" in refused.stderr
    masks = fuse_cli("mask", "-o", out, input=_records(pairs, ["scene_02"]))
    assert masks.returncode == 0
    mixed = fuse_cli("fuse", "-m", "mean", "-o", out, input=_records(pairs, ["scene_02"]))
    assert mixed.returncode == 1 and "was made by fuse mask" in mixed.stderr


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_every_image_format_carries_its_recipe(suffix, tmp_path):
    recipe = {"stage": "fuse", "method": "max", "inputs": {"ir": "sha256:00"}}
    write_image(tmp_path / f"x{suffix}", np.zeros((4, 5, 3), np.float32), recipe=recipe)
    assert read_recipe(tmp_path / f"x{suffix}") == recipe
    write_image(tmp_path / f"plain{suffix}", np.zeros((4, 5), np.float32))
    assert read_recipe(tmp_path / f"plain{suffix}") is None
    write_image(tmp_path / f"odd{suffix}", np.zeros((4, 5), np.float32), recipe={"stage": "fuse", "inputs": ["?"]})
    assert read_recipe(tmp_path / f"odd{suffix}") is None  # a crafted recipe is no recipe, not a crash


def test_caption_and_register_skip_only_their_own_recipe(synthetic_pairs, tmp_path):
    text = _records(synthetic_pairs, ["scene_00"])
    assert fuse_cli("caption", "-o", tmp_path / "cap", input=text).returncode == 0
    assert read_recipe(tmp_path / "cap" / "scene_00.recipe.json")["method"] == "advisor"
    again = fuse_cli("caption", "-o", tmp_path / "cap", "--keyword", "car", input=text)
    assert again.returncode == 1 and "keyword" in again.stderr
    assert fuse_cli("register", "-o", tmp_path / "reg", input=text).returncode == 0
    other = fuse_cli("register", "--ecc-model", "homography", "-o", tmp_path / "reg", input=text)
    assert other.returncode == 1 and "ecc_model" in other.stderr and "reg/scene_00.png" in other.stderr


# --- duplicate ids, temporaries ------------------------------------------------------------------


def test_duplicate_ids_under_threads_fail_the_later_pairs_and_the_file_is_whole(synthetic_pairs, tmp_path):
    record = {"id": "dup", "ir": str(synthetic_pairs / "ir/scene_00.png"), "vis": str(synthetic_pairs / "vis/scene_00.png")}
    done = fuse_cli("fuse", "-m", "mean", "-o", tmp_path, "-j", "4", "-b", "8", input=(json.dumps(record) + "\n") * 20)
    assert done.returncode == 1
    records = records_of(done.stdout)
    assert "error" not in records[0] and all("duplicate id" in r["error"] for r in records[1:])
    assert done.stderr.count("duplicate id") == 19
    assert read_image(tmp_path / "dup.png").shape == (240, 320, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.png"]


def test_temporary_names_are_unique_per_write_and_thread(tmp_path):
    with atomic_file(tmp_path / "x.txt") as first, atomic_file(tmp_path / "x.txt") as second:
        assert first != second
        first.write_text("first")
        second.write_text("second")
    assert (tmp_path / "x.txt").read_text() == "first"  # renamed last: each write is whole
    names, lock = set(), threading.Lock()

    def claim():
        for _ in range(100):
            name = temporary_path(tmp_path / "x.png")
            with lock:
                names.add(name)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 800


def test_a_rerun_removes_temporaries_a_killed_run_left(synthetic_pairs, tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)  # a process that has ended, as one killed with -9
    stale = temporary_path(tmp_path / "scene_00.png", pid=dead)
    stale.write_bytes(b"")
    older = tmp_path / f".scene_00.part-{dead}.png"  # as fuse named temporaries before
    older.write_bytes(b"")
    alive = temporary_path(tmp_path / "scene_01.png")  # this test's process runs: its file is not ours to remove
    alive.write_bytes(b"")
    done = fuse_cli("fuse", "-m", "mean", "-o", tmp_path, "-v", input=_records(synthetic_pairs))
    assert done.returncode == 0 and f"{stale}: removed" in done.stderr
    assert not stale.exists() and not older.exists() and alive.exists()
    assert (tmp_path / "scene_00.png").is_file()


# --- where records come from ----------------------------------------------------------------------


def test_records_from_any_readable_path(synthetic_pairs, tmp_path):
    text = _records(synthetic_pairs)
    (tmp_path / "p.jsonl").write_text(text)
    for source in ("-", "/dev/stdin"):
        done = fuse_cli("fuse", "-m", "mean", "-o", tmp_path / "out", "-r", source, input=text)
        assert done.returncode == 0 and len(records_of(done.stdout)) == 2, done.stderr
    fuse = f"{sys.executable} -m fuse_cli"
    piped = subprocess.run(["bash", "-c", f"{fuse} fuse -m mean -o out2 -r <(cat p.jsonl)"], cwd=tmp_path,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert piped.returncode == 0 and len(records_of(piped.stdout)) == 2, piped.stderr
    missing = fuse_cli("fuse", "-o", tmp_path / "out", "-r", tmp_path / "none.jsonl")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "none.jsonl" in missing.stderr
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage\n" + text.encode())
    mixed = fuse_cli("fuse", "-m", "mean", "-o", tmp_path / "out", "-r", binary)
    assert mixed.returncode == 1 and [("error" in r) for r in records_of(mixed.stdout)] == [True, False, False]
