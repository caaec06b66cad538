"""End-to-end behaviour of the spine: pairing, records, the batch runner, errors, I/O."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import fuse_cli, records_of, shared
from stages.core.images import read_image, write_image


def _copy_pairs(src: Path, dst: Path, ids: list[str] | None = None) -> Path:
    for sub in ("ir", "vis"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / sub).iterdir()):
            if ids is None or f.stem in ids:
                shutil.copy(f, dst / sub / f.name)
    return dst


# --- pairing and records ---------------------------------------------------------------


def test_pairs_match_by_stem_across_extensions_and_report_unmatched(tmp_path):
    img = np.full((8, 8), 0.5, np.float32)
    for name in ("FLIR_00006.jpg", "b10.png", "b2.png", "only_ir.png"):
        write_image(tmp_path / "ir" / name, img)
    for name in ("FLIR_00006.png", "b10.bmp", "b2.png", "only_vis.tif"):
        write_image(tmp_path / "vis" / name, img)
    done = fuse_cli("pairs", tmp_path / "ir", tmp_path / "vis")
    records = records_of(done.stdout)
    assert [r["id"] for r in records] == ["FLIR_00006", "b2", "b10"]  # natural order: b2 before b10
    assert records[0]["ir"].endswith("FLIR_00006.jpg") and records[0]["vis"].endswith("FLIR_00006.png")
    lines = done.stderr.splitlines()  # one line per folder lacking a file, naming the stem
    assert len(lines) == 2 and "(only_vis)" in lines[0] and "(only_ir)" in lines[1]
    assert done.returncode == 1
    verbose = fuse_cli("pairs", tmp_path / "ir", tmp_path / "vis", "-v")
    assert "only_ir.png" in verbose.stderr and "only_vis.tif" in verbose.stderr


def test_rs_framing_written_and_accepted(synthetic_pairs, tmp_path):
    listed = fuse_cli("pairs", synthetic_pairs / "ir", synthetic_pairs / "vis", "--rs")
    assert listed.returncode == 0
    assert listed.stdout.startswith("\x1e{") and listed.stdout.count("\x1e") == 4
    fused = fuse_cli("fuse", "-m", "mean", "-o", tmp_path, input=listed.stdout)
    assert fused.returncode == 0, fused.stderr
    assert len(records_of(fused.stdout)) == 4


def test_input_from_dirs_records_file_and_stdin_agree(synthetic_pairs, tmp_path):
    listed = fuse_cli("pairs", synthetic_pairs / "ir", synthetic_pairs / "vis").stdout
    (tmp_path / "pairs.jsonl").write_text(listed)
    runs = {
        "dirs": fuse_cli("fuse", "-m", "max", "-o", tmp_path / "a", "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis"),
        "file": fuse_cli("fuse", "-m", "max", "-o", tmp_path / "b", "--records", tmp_path / "pairs.jsonl"),
        "stdin": fuse_cli("fuse", "-m", "max", "-o", tmp_path / "c", input=listed),
    }
    for run in runs.values():
        assert run.returncode == 0, run.stderr
    ids = [[r["id"] for r in records_of(run.stdout)] for run in runs.values()]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 4
    for pair_id in ids[0]:
        a = (tmp_path / "a" / f"{pair_id}.png").read_bytes()
        assert a == (tmp_path / "b" / f"{pair_id}.png").read_bytes() == (tmp_path / "c" / f"{pair_id}.png").read_bytes()


def test_unknown_keys_pass_through(synthetic_pairs, tmp_path):
    record = {"id": "scene_00", "ir": str(synthetic_pairs / "ir/scene_00.png"), "vis": str(synthetic_pairs / "vis/scene_00.png"), "note": {"x": 1}}
    done = fuse_cli("fuse", "-m", "mean", "-o", tmp_path, input=json.dumps(record) + "\n")
    (out,) = records_of(done.stdout)
    assert out["note"] == {"x": 1} and out["fused"] == str(tmp_path / "scene_00.png") and out["method"] == "mean"


# --- incremental runs, dry run, shards -------------------------------------------------


def test_existing_outputs_are_skipped_unless_overwrite(synthetic_pairs, tmp_path):
    args = ("fuse", "-m", "mean", "-o", tmp_path, "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis")
    assert fuse_cli(*args).returncode == 0
    target = tmp_path / "scene_01.png"
    made = target.stat().st_mtime_ns
    again = fuse_cli(*args)
    assert again.returncode == 0 and target.stat().st_mtime_ns == made  # made by the same recipe: skipped
    assert all("fused" in r for r in records_of(again.stdout))
    target.write_bytes(b"sentinel")  # made by something else: refused, left as it is
    refused = fuse_cli(*args)
    assert refused.returncode == 1 and str(target) in refused.stderr and target.read_bytes() == b"sentinel"
    assert fuse_cli(*args, "--overwrite").returncode == 0
    assert read_image(target).shape == (240, 320, 3)


def test_dry_run_writes_nothing(synthetic_pairs, tmp_path):
    done = fuse_cli("fuse", "-m", "mean", "-o", tmp_path / "out", "--dry-run", "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis")
    assert done.returncode == 0
    assert done.stderr.count("would write") == 4 and not (tmp_path / "out").exists()


def test_shards_cover_every_pair_exactly_once(synthetic_pairs, tmp_path):
    seen = []
    for k in (1, 2, 3):
        done = fuse_cli("fuse", "-m", "mean", "-o", tmp_path, "--shard", f"{k}/3", "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis")
        assert done.returncode == 0
        seen += [r["id"] for r in records_of(done.stdout)]
    assert sorted(seen) == [f"scene_{i:02d}" for i in range(4)]
    assert fuse_cli("fuse", "--shard", "4/3", "-o", tmp_path, input="").returncode == 2


def test_workers_and_batches_keep_input_order(synthetic_pairs, tmp_path):
    listed = fuse_cli("pairs", synthetic_pairs / "ir", synthetic_pairs / "vis").stdout
    done = fuse_cli("fuse", "-m", "laplacian", "-o", tmp_path, "-j", "3", "-b", "3", input=listed)
    assert done.returncode == 0
    assert [r["id"] for r in records_of(done.stdout)] == [r["id"] for r in records_of(listed)]


# --- colour, size, bit depth -----------------------------------------------------------


@pytest.mark.parametrize("method", ["mean", "max", "laplacian", "gff"])
def test_colour_and_size_preserved_on_roadscene_and_tno(method, tmp_path):
    roadscene, tno = shared("roadscene"), shared("tno")
    pairs = _copy_pairs(roadscene, tmp_path / "rs", ["FLIR_00006", "FLIR_08835"])
    _copy_pairs(tno, pairs, ["01", "02"])  # gray VIS, different sizes
    done = fuse_cli("fuse", "-m", method, "-o", tmp_path / "out", "--ir", pairs / "ir", "--vis", pairs / "vis")
    assert done.returncode == 0, done.stderr
    for record in records_of(done.stdout):
        vis, fused = read_image(record["vis"]), read_image(record["fused"])
        assert fused.shape == vis.shape, record["id"]  # RGB stays RGB, gray stays gray, same H and W


def test_rgb_output_keeps_visible_chroma(synthetic_pairs, tmp_path):
    done = fuse_cli("fuse", "-m", "max", "-o", tmp_path, "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis")
    record = records_of(done.stdout)[0]
    vis, fused = read_image(record["vis"]), read_image(record["fused"])

    def chroma(rgb):
        y = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.stack([(rgb[..., 2] - y) * 0.564, (rgb[..., 0] - y) * 0.713])

    unclipped = (fused.max(-1) < 0.99) & (fused.min(-1) > 0.01)
    assert np.abs(chroma(vis) - chroma(fused))[:, unclipped].mean() < 0.01


@pytest.mark.parametrize("shape", [(33, 47), (33, 47, 3)])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_png_round_trips_exactly_with_its_recipe(tmp_path, shape, bit_depth):
    """Every PNG fuse writes, 16-bit RGB included (Pillow can neither write nor read those), reads back bit for bit."""
    from PIL import Image

    from stages.core.provenance import read_recipe

    top = 2 ** bit_depth - 1
    img = np.random.default_rng(1).integers(0, top + 1, size=shape) / top
    img.flat[:2] = 0.0, 1.0  # full range: a 16-bit file is read as value / 65535
    recipe = {"stage": "fuse", "method": "max", "inputs": {"ir": "ir/a.png", "vis": "vis/a.png"}, "note": "ü"}
    path = tmp_path / "x.png"
    write_image(path, img, bit_depth=bit_depth, recipe=recipe)
    with Image.open(path) as im:
        assert im.size == (shape[1], shape[0]) and im.info["fuse-recipe"]
    assert np.array_equal(np.rint(read_image(path).astype(np.float64) * top), np.rint(img * top))
    assert read_recipe(path) == recipe


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_read_uint8_equals_the_float_route(tmp_path, suffix):
    """read_uint8 hands an 8-bit file's values over as decoded; they equal to_uint8(read_image(path))."""
    import imageio.v3 as iio

    from stages.core.images import read_uint8, to_uint8

    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(21, 34, 3), dtype=np.uint8)
    images = {"gray": rgb[..., 0], "rgb": rgb, "gray_as_rgb": np.repeat(rgb[..., :1], 3, -1),
              "rgba": np.concatenate([rgb, rgb[..., :1]], -1)}
    for name, data in images.items():
        if suffix in (".jpg", ".bmp") and name == "rgba":
            continue
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".tif":
            tifffile.imwrite(path, data)
        else:
            iio.imwrite(path, data)
        fast = read_uint8(path)
        assert fast.dtype == np.uint8 and np.array_equal(fast, to_uint8(read_image(path))), name


def test_16bit_tiff_round_trip_and_radiometric_ir(tmp_path):
    img = np.random.default_rng(0).random((33, 47)).astype(np.float32)
    write_image(tmp_path / "x.tif", img, bit_depth=16)
    raw = tifffile.imread(tmp_path / "x.tif")
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(np.rint(read_image(tmp_path / "x.tif") * 65535), raw)
    # Radiometric IR: raw counts in a narrow band are stretched by the 0.1/99.9 percentile rule.
    counts = (7000 + 1500 * img).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ir.tiff", counts)
    stretched = read_image(tmp_path / "ir.tiff")
    assert stretched.min() == 0 and stretched.max() == 1
    assert np.corrcoef(stretched.ravel(), counts.ravel())[0, 1] > 0.99


def test_16bit_output_and_tif_format(synthetic_pairs, tmp_path):
    done = fuse_cli("fuse", "-m", "mean", "-o", tmp_path, "--out-format", "tif", "--bit-depth", "16", "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis")
    assert done.returncode == 0, done.stderr
    assert tifffile.imread(tmp_path / "scene_00.tif").dtype == np.uint16
    assert fuse_cli("fuse", "--out-format", "jpg", "--bit-depth", "16", "-o", tmp_path, input="").returncode == 2


def test_gray_stored_as_rgb_and_rgba_inputs(tmp_path):
    gray = (np.random.default_rng(1).random((20, 30)) * 255).astype(np.uint8)
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "g3.png", np.repeat(gray[..., None], 3, -1))
    rgba = np.dstack([np.repeat(gray[..., None], 3, -1), np.full_like(gray, 255)])
    rgba[..., 0] = 255 - gray
    iio.imwrite(tmp_path / "rgba.png", rgba)
    assert read_image(tmp_path / "g3.png").shape == (20, 30)
    assert read_image(tmp_path / "rgba.png").shape == (20, 30, 3)


# --- errors: one line naming the pair and the file, others complete, exit 1 -------------


def test_a_corrupt_image_gets_the_same_message_once_ultralytics_is_imported(tmp_path):
    """ultralytics patches PIL.Image.open (it tries to install a HEIF plugin on unknown files)."""
    pytest.importorskip("ultralytics")
    corrupt = tmp_path / "frame.png"
    corrupt.write_bytes(b"not a png")
    script = (
        "import sys\nfrom stages.core.images import read_image\n"
        "def message():\n"
        "    try:\n        read_image(sys.argv[1])\n    except ValueError as exc:\n        return str(exc)\n"
        "before = message()\nimport ultralytics\nprint(before)\nprint(message())\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(corrupt)], capture_output=True, text=True, check=True)
    before, after = done.stdout.splitlines()
    assert before == after == f"{corrupt}: unreadable image (not a PNG, JPEG, BMP or TIFF file: it starts b'not ')"
    assert "pi-heif" not in done.stderr


def _bad_inputs(synthetic_pairs: Path, tmp_path: Path) -> str:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    small = tmp_path / "small.png"
    write_image(small, np.zeros((10, 10), np.float32))
    good = lambda i: {"id": f"scene_0{i}", "ir": str(synthetic_pairs / f"ir/scene_0{i}.png"), "vis": str(synthetic_pairs / f"vis/scene_0{i}.png")}
    lines = [
        json.dumps(good(0)),
        json.dumps({"id": "missing", "ir": str(tmp_path / "nope.png"), "vis": good(1)["vis"]}),
        json.dumps({"id": "unreadable", "ir": str(garbage), "vis": good(1)["vis"]}),
        json.dumps({"id": "sizes", "ir": str(small), "vis": good(2)["vis"]}),
        '{"id": "broken", "ir": ',
        json.dumps(good(3)),
    ]
    return "\n".join(lines) + "\n"


def test_bad_pairs_are_reported_and_the_rest_complete(synthetic_pairs, tmp_path):
    done = fuse_cli("fuse", "-m", "laplacian", "-o", tmp_path / "out", input=_bad_inputs(synthetic_pairs, tmp_path))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 4
    assert any("missing" in e and "nope.png" in e for e in errors)
    assert any("unreadable" in e and "garbage.png" in e for e in errors)
    assert any("sizes" in e and "small.png" in e and "--resize" in e for e in errors)
    assert any("line 5" in e for e in errors)
    records = records_of(done.stdout)
    assert [r["id"] for r in records] == ["scene_00", "missing", "unreadable", "sizes", "line-5", "scene_03"]
    assert [("error" in r) for r in records] == [False, True, True, True, True, False]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scene_00.png", "scene_03.png"]


def test_resize_opts_in_to_resampling(synthetic_pairs, tmp_path):
    small = tmp_path / "small.png"
    write_image(small, np.full((60, 80), 0.7, np.float32))
    record = {"id": "r", "ir": str(small), "vis": str(synthetic_pairs / "vis/scene_00.png")}
    done = fuse_cli("fuse", "-m", "max", "-o", tmp_path, "--resize", "vis", input=json.dumps(record))
    assert done.returncode == 0, done.stderr
    assert read_image(tmp_path / "r.png").shape == (240, 320, 3)


def test_errors_from_an_earlier_stage_pass_through_and_fail_the_exit_status(tmp_path):
    done = fuse_cli("fuse", "-o", tmp_path, input='{"id": "x", "error": "earlier failure"}\n')
    assert done.returncode == 1 and records_of(done.stdout) == [{"id": "x", "error": "earlier failure"}]


def test_usage_errors_exit_2(tmp_path):
    assert fuse_cli("fuse", "-m", "nonsense", "-o", tmp_path, input="").returncode == 2
    assert fuse_cli("fuse", "--ir", tmp_path, "-o", tmp_path).returncode == 2
    assert fuse_cli("pairs", tmp_path / "no", tmp_path).returncode == 2


def test_killed_run_leaves_no_partial_image_and_rerun_finishes(tmp_path):
    src = shared("msrs")
    listed = fuse_cli("pairs", src / "ir", src / "vis").stdout
    proc = subprocess.Popen(
        [sys.executable, "-m", "fuse_cli", "fuse", "-m", "laplacian", "-o", str(tmp_path), "-b", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )
    proc.stdin.write(listed)
    proc.stdin.close()
    deadline = time.time() + 120
    outputs = lambda: sorted(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    while len(outputs()) < 2 and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    written = outputs()
    assert 2 <= len(written) < 26
    for path in written:
        assert read_image(path).shape == (480, 640, 3)  # every image there is complete
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    rerun = fuse_cli("fuse", "-m", "laplacian", "-o", tmp_path, input=listed)
    assert rerun.returncode == 0 and len(outputs()) == 26


# --- the shell pipeline, help, version, man pages --------------------------------------


def test_shell_pipeline_pairs_fuse_score(tmp_path):
    tno = shared("tno")
    ir, vis = tno / "ir", tno / "vis"
    listed = tmp_path / "pairs.jsonl"
    listed.write_text("".join(fuse_cli("pairs", ir, vis).stdout.splitlines(keepends=True)[:3]))
    cmd = (
        f"cat {listed} "
        f"| {sys.executable} -m fuse_cli fuse -m laplacian -o {tmp_path / 'fused'} "
        f"| {sys.executable} -m fuse_cli score --metrics EN,SD,SF,AG,MI,SSIM,Qabf > {tmp_path / 'scores.csv'}"
    )
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    assert lines[0] == "id,method,convention,EN,SD,SF,AG,MI,SSIM,Qabf"
    assert [line.split(",")[0] for line in lines[1:]] == ["01", "02", "03", "mean"]
    values = [float(v) for v in lines[-1].split(",")[3:]]
    assert all(np.isfinite(values)) and 5 < values[0] < 8  # EN of an 8-bit image, in bits


def test_help_lists_working_commands_and_version():
    done = fuse_cli("--help")
    for command in ("pairs", "fuse", "score"):
        assert command in done.stdout
    assert fuse_cli("--version").stdout.startswith("fuse ")
    methods = fuse_cli("fuse", "--list-methods").stdout
    for method in ("mean", "max", "laplacian", "gff"):
        assert method in methods


def test_man_pages_render(tmp_path):
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    pages = sorted((Path(__file__).resolve().parents[1] / "man").glob("*.1"))
    assert {p.stem for p in pages} >= {"fuse", "fuse-pairs", "fuse-fuse", "fuse-score"}
    for page in pages:
        done = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, env={"MANPAGER": "cat", "PAGER": "cat", "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0 and "NAME" in done.stdout, page
        assert "warning" not in done.stderr.lower(), done.stderr


def test_man_pages_are_generated_from_the_current_commands():
    from fuse_cli.manpages import pages

    folder = Path(__file__).resolve().parents[1] / "man"
    for filename, text in pages().items():
        assert (folder / filename).read_text() == text, f"man/{filename} is stale: run python -m fuse_cli.manpages man"


def test_example_makefile_fuses_and_scores_with_make_j2(synthetic_pairs, tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    make = ["make", "-s", "-f", str(root / "examples" / "Makefile"), "-j2", f"IR={synthetic_pairs / 'ir'}",
            f"VIS={synthetic_pairs / 'vis'}", f"OUT={out}", "METHOD=mean", f"FUSE={sys.executable} -m fuse_cli"]
    subprocess.run(make, check=True, capture_output=True, cwd=root)
    rows = (out / "scores.csv").read_text().splitlines()
    assert sorted(r.split(",")[0] for r in rows[1:-1]) == [f"scene_{i:02d}" for i in range(4)]
    assert rows[-1].startswith("mean,mean,")
    assert len(list((out / "fused").glob("scene_*.png"))) == 4


def test_closed_pipe_ends_quietly():
    roadscene = shared("roadscene")
    cmd = f"{sys.executable} -m fuse_cli pairs {roadscene / 'ir'} {roadscene / 'vis'} | head -n 1"
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith('{"id": ')
    assert done.stderr == ""  # no BrokenPipeError traceback from `fuse pairs`
