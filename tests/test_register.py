"""Tests of ``fuse register`` (stages/register.py) and its network (stages/nets/registration.py).

Real pairs come from ``../shared/data/unaligned/roadscene`` (skipped when absent);
the rest runs on small synthetic pairs. Runs in well under a minute on 2 cores.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages.core.images import luminance, read_image, write_image
from stages.core.stage import StageError
from stages.nets.inference import fold_batchnorm
from stages.nets.registration import RegistrationNet, load_registration_net, save_state
from stages.nets.tard import WEIGHTS as TARD_WEIGHTS
from stages.nets.tard import TardNet, load_tard
from stages.methods.learned import tard_factory
from stages.metrics.registration import residual_displacement
from stages.register import RegisterStage, apply_grid, ecc_grid, ecc_warp
from stages.training.registration import invert_grid, load_init, make_batch, random_correction, train_register

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UNALIGNED = DATA / "unaligned" / "roadscene"
needs_data = pytest.mark.skipif(
    not (UNALIGNED / "grid").is_dir(), reason=f"real unaligned pairs not found at {UNALIGNED} (../shared/data)"
)
PACKAGED = Path(__file__).resolve().parents[1] / "stages" / "weights" / "register.safetensors"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the test machine is shared, and more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def real_ids(n: int) -> list[str]:
    return sorted(p.stem for p in (UNALIGNED / "grid").glob("*.npy"))[:n]


def identity(h: int, w: int) -> np.ndarray:
    xs, ys = (np.arange(w) + 0.5) * 2 / w - 1, (np.arange(h) + 0.5) * 2 / h - 1
    return np.stack(np.meshgrid(xs, ys), -1).astype(np.float32)


def scene(h: int = 96, w: int = 144, seed: int = 0) -> np.ndarray:
    """A smooth random texture in [0, 1] with strong edges (blobs), ``(h, w)``."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.random((1, 1, h // 8, w // 8), dtype=np.float32))
    img = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0, 0].numpy()
    return np.clip((img > 0.5) * 0.6 + img * 0.4, 0, 1).astype(np.float32)


def shifted_pair(tmp_path: Path, dx: int = 9, dy: int = 5, rgb_ir: bool = False) -> dict:
    """VIS = scene; IR = the same scene moved by (dx, dy) px, inverted (another modality)."""
    big = scene(96 + 2 * 16, 144 + 2 * 16)
    vis = big[16:-16, 16:-16]
    ir = 1.0 - big[16 + dy : 16 + dy + 96, 16 + dx : 16 + dx + 144]
    if rgb_ir:
        ir = np.stack([ir, ir * 0.5, ir * 0.25], -1)
    write_image(tmp_path / "ir.png", ir)
    write_image(tmp_path / "vis.png", np.stack([vis] * 3, -1) * np.array([1.0, 0.9, 0.8]))
    return {"id": "p1", "ir": str(tmp_path / "ir.png"), "vis": str(tmp_path / "vis.png")}


def pair_folders(tmp_path: Path) -> list[str]:
    """:func:`shifted_pair` as ``tmp_path/ir/p1.png`` and ``tmp_path/vis/p1.png``: the ``--ir DIR --vis DIR`` arguments."""
    rec = shifted_pair(tmp_path)
    for folder in ("ir", "vis"):
        (tmp_path / folder).mkdir()
        Path(rec[folder]).rename(tmp_path / folder / "p1.png")
    return ["--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vis")]


# --- the dataset convention -------------------------------------------------------------


@needs_data
def test_dataset_grid_convention_round_trip():
    """grid_sample(aligned IR, dataset grid, align_corners=False) reproduces ir_warp."""
    for pid in real_ids(3):
        grid = np.load(UNALIGNED / "grid" / f"{pid}.npy")
        ir, warped = read_image(UNALIGNED / "ir" / f"{pid}.png"), read_image(UNALIGNED / "ir_warp" / f"{pid}.png")
        ours = F.grid_sample(torch.from_numpy(ir)[None, None], torch.from_numpy(grid)[None], align_corners=False)[0, 0]
        assert np.abs(ours.numpy() - warped).mean() * 255 < 1.0
        masked, valid = apply_grid(ir, grid, mask_invalid=True)
        assert np.abs(masked - warped)[valid].mean() * 255 < 1.0
        assert np.all(masked[~valid] == 0)


@needs_data
def test_residual_displacement_of_identity_is_the_deformation():
    pid = real_ids(1)[0]
    grid = np.load(UNALIGNED / "grid" / f"{pid}.npy")
    h, w = grid.shape[:2]
    err, valid = residual_displacement(identity(h, w), grid)
    moved = np.hypot((grid[..., 0] - identity(h, w)[..., 0]) * w / 2, (grid[..., 1] - identity(h, w)[..., 1]) * h / 2)
    assert np.allclose(err[valid], moved[valid], atol=1e-3)
    assert 5 < err[valid].mean() < 40


# --- ECC ----------------------------------------------------------------------------------


@needs_data
def test_ecc_reduces_error_on_real_pairs():
    """On the first three unaligned pairs, ECC at least halves end-point error and IR error."""
    for pid in real_ids(3):
        deformation = np.load(UNALIGNED / "grid" / f"{pid}.npy")
        ir = read_image(UNALIGNED / "ir_warp" / f"{pid}.png")
        aligned = read_image(UNALIGNED / "ir" / f"{pid}.png")
        vis = luminance(read_image(UNALIGNED / "vis" / f"{pid}.png"))
        grid = ecc_grid(ir, vis)
        err, valid = residual_displacement(grid, deformation)
        err0, valid0 = residual_displacement(identity(*vis.shape), deformation)
        assert err[valid].mean() < 0.5 * err0[valid0].mean(), pid
        registered, _ = apply_grid(ir, grid)
        both = valid & valid0
        assert np.abs(registered - aligned)[both].mean() < 0.6 * np.abs(ir - aligned)[both].mean(), pid


def test_ecc_recovers_a_cross_modal_shift():
    big = scene(128, 176)
    vis = big[16:-16, 16:-16]
    ir = 1.0 - big[21:117, 25:169]  # VIS pixel (x, y) is IR pixel (x - 9, y - 5), contrast inverted
    assert ecc_warp(ir, vis)[1] == "ecc"
    grid = ecc_grid(ir, vis)
    expect = identity(96, 144) + np.array([-9 * 2 / 144, -5 * 2 / 96], np.float32)
    err = np.hypot((grid[..., 0] - expect[..., 0]) * 72, (grid[..., 1] - expect[..., 1]) * 48)
    assert err.mean() < 0.5


# --- the stage ----------------------------------------------------------------------------


def test_stage_outputs_sizes_channels_and_record(tmp_path):
    rec = shifted_pair(tmp_path, rgb_ir=True)
    stage = RegisterStage(tmp_path / "out", method="ecc", save_overlay=True)
    assert stage.outputs(rec) == [tmp_path / "out" / "p1.png", tmp_path / "out" / "p1.grid.npy", tmp_path / "out" / "p1.overlay.png"]
    result = stage.process_one(rec)
    assert result["ir"] == str(tmp_path / "out" / "p1.png")
    assert result["ir_unregistered"] == rec["ir"]
    assert result["grid"] == str(tmp_path / "out" / "p1.grid.npy")
    registered = read_image(result["ir"])
    assert registered.shape == (96, 144, 3)
    grid = np.load(result["grid"])
    assert grid.shape == (96, 144, 2) and grid.dtype == np.float32
    assert read_image(result["overlay"]).shape == (96, 144, 3)
    assert result["registration"]["path"] == "ecc" and result["registration"]["confidence"] > 0.3
    # a skipped pair gets the same paths (its confidence was said when it was made)
    assert stage.skip_update(rec) == {k: v for k, v in result.items() if k != "registration"}
    # the saved grid reproduces the saved image
    again, _ = apply_grid(read_image(rec["ir"]), grid)
    assert np.abs(again - registered).max() <= 1 / 255 + 1e-6


def test_stage_ir_of_another_size_lands_on_the_vis_grid(tmp_path):
    rec = shifted_pair(tmp_path)
    ir = read_image(rec["ir"])
    small = F.interpolate(torch.from_numpy(ir)[None, None], size=(72, 108), mode="bilinear", antialias=True)[0, 0].numpy()
    write_image(tmp_path / "ir_small.png", small)
    result = RegisterStage(tmp_path / "out").process_one({**rec, "ir": str(tmp_path / "ir_small.png")})
    assert read_image(result["ir"]).shape == (96, 144)


def test_mask_invalid_marks_out_of_bounds_pixels(tmp_path):
    rec = shifted_pair(tmp_path, dx=12, dy=8)
    result = RegisterStage(tmp_path / "out", mask_invalid=True).process_one(rec)
    grid = np.load(result["grid"])
    valid = read_image(result["valid"]) > 0.5
    outside = np.any(np.abs(grid) > 1, -1)
    assert outside.sum() > 12 * 96  # a shift of 12 px leaves a strip with no IR
    assert np.array_equal(valid, ~outside)
    assert np.all(read_image(result["ir"])[~valid] == 0)


def test_max_displacement_rejects_with_the_pair_named(tmp_path):
    rec = shifted_pair(tmp_path, dx=12, dy=8)
    stage = RegisterStage(tmp_path / "out", max_displacement=3)
    (err,) = stage.process([rec])
    assert isinstance(err, StageError) and "p1" in str(err) and "max-displacement" in str(err)
    assert not (tmp_path / "out" / "p1.png").exists()


def test_bad_input_names_the_pair(tmp_path):
    stage = RegisterStage(tmp_path / "out")
    (err,) = stage.process([{"id": "gone", "ir": str(tmp_path / "none.png"), "vis": str(tmp_path / "none.png")}])
    assert isinstance(err, StageError) and "gone" in str(err) and "none.png" in str(err)
    with pytest.raises(ValueError, match="ecc, net, net-ecc"):
        RegisterStage(tmp_path, method="sift")


# --- the network ----------------------------------------------------------------------------


def test_net_shapes_and_gradients():
    torch.manual_seed(0)
    net = RegistrationNet(size=(64, 128))
    ir, vis = torch.rand(2, 1, 64, 128), torch.rand(2, 1, 64, 128)
    out = net(ir, vis, specific=True)
    assert [tuple(f.shape) for f in out["flows"]] == [(2, 2, 1, 2), (2, 2, 2, 4), (2, 2, 4, 8), (2, 2, 8, 16), (2, 2, 16, 32), (2, 2, 32, 64)]
    assert out["grid"].shape == (2, 64, 128, 2)
    assert out["ir_specific"].shape == (2, 8, 64, 128) and out["ir_specific"].abs().max() <= 1
    # the zero-initialised field heads give no gradient to the layers below: perturb them first
    for head in (*net.msrb.predict, net.msrb.fine_predict):
        torch.nn.init.normal_(head.weight, std=0.01)
    out = net(ir, vis)
    loss = sum((f - 0.1).square().mean() for f in out["flows"]) + (out["ir_common"] - out["vis_common"]).abs().mean()
    loss.backward()
    trained = [n for n, p in net.named_parameters() if "specific" not in n]
    assert all(net.get_parameter(n).grad is not None and torch.isfinite(net.get_parameter(n).grad).all() for n in trained)
    grid = net.eval().estimate_grid(torch.rand(1, 1, 50, 70), torch.rand(1, 1, 50, 70))
    assert grid.shape == (1, 50, 70, 2)


def test_init_from_weights_without_the_fine_level_starts_as_those_weights(tmp_path):
    """Fine-tuning weights saved before the MSRB's finest level existed: the level starts as "no correction"."""
    from safetensors.torch import save_file

    torch.manual_seed(2)
    old = TardNet(size=(64, 128))
    for head in old.registration.msrb.predict:
        torch.nn.init.normal_(head.weight, std=0.05)
    state = {k: v for k, v in old.state_dict().items() if ".fine_" not in k}
    save_file(state, str(tmp_path / "old.safetensors"))
    new, said = TardNet(size=(64, 128)), []
    load_init(new, tmp_path / "old.safetensors", said.append)
    assert "registration.msrb.fine_decode" in said[0] and "registration.msrb.fine_predict" in said[0]
    flows = new.registration.eval()(torch.rand(1, 1, 64, 128), torch.rand(1, 1, 64, 128))["flows"]
    coarser = F.interpolate(flows[-2], size=flows[-1].shape[-2:], mode="bilinear", align_corners=False)
    assert torch.equal(flows[-1], coarser) and flows[-1].abs().max() > 0
    save_file({**state, "stray.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="other.safetensors: weights this network does not have: stray.weight"):
        load_init(TardNet(size=(64, 128)), tmp_path / "other.safetensors")


def test_init_from_a_registration_network_file_takes_its_registration_and_a_fresh_head(tmp_path):
    """``--init register.safetensors``: the registration starts as that file (the shipped one is chosen
    on validation apart from tard's), the fusion head from its initialisation."""
    from safetensors.torch import save_file

    torch.manual_seed(4)
    source = TardNet(size=(64, 128))
    for head in source.registration.msrb.predict:
        torch.nn.init.normal_(head.weight, std=0.05)
    save_file(source.registration.state_dict(), str(tmp_path / "register.safetensors"))
    torch.manual_seed(5)
    net, said = TardNet(size=(64, 128)), []
    fresh_head = {k: v.clone() for k, v in net.head.state_dict().items()}
    load_init(net, tmp_path / "register.safetensors", said.append)
    assert said == [f"{tmp_path / 'register.safetensors'}: new modules start from their initialisation: head"]
    assert all(torch.equal(v, source.registration.state_dict()[k]) for k, v in net.registration.state_dict().items())
    assert all(torch.equal(v, fresh_head[k]) for k, v in net.head.state_dict().items())


def test_ensemble_estimate_of_a_mirrored_pair_is_the_mirrored_estimate():
    torch.manual_seed(3)
    net = RegistrationNet(size=(64, 96))
    for head in (*net.msrb.predict, net.msrb.fine_predict):
        torch.nn.init.normal_(head.weight, std=0.05)
    net.eval()
    ir, vis = torch.rand(1, 1, 50, 80), torch.rand(1, 1, 50, 80)
    field = net.estimate_field(ir, vis)
    mirrored = net.estimate_field(ir.flip(-1), vis.flip(-1))
    assert field.shape == (1, 2, 32, 48)
    assert torch.allclose(mirrored, field.flip(-1) * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1), atol=1e-5)
    single = net.estimate_field(ir, vis, ensemble=False)
    assert single.shape == field.shape and not torch.allclose(single, field, atol=1e-4)


def test_single_pass_is_refused_for_ecc(tmp_path):
    from typer.testing import CliRunner

    from fuse_cli.app import app

    done = CliRunner().invoke(app, ["register", "-m", "ecc", "--single-pass", *pair_folders(tmp_path),
                                    "-o", str(tmp_path / "out")])
    assert done.exit_code == 2 and "not ecc" in done.stderr and not (tmp_path / "out").exists()


def test_fuse_train_register_leaves_the_defaults_to_the_trainer(tmp_path, monkeypatch):
    """`fuse train -m register` passes on only the options given, so the trainer's defaults (the spec's recipe) apply."""
    from typer.testing import CliRunner

    import stages.training.registration as register_training
    from fuse_cli.app import app

    calls = []
    monkeypatch.setattr(register_training, "train_register",
                        lambda pairs, out, **kwargs: calls.append(kwargs) or Path(out) / "register.safetensors")
    args = ["train", "-m", "register", *pair_folders(tmp_path), "-o", str(tmp_path / "run")]
    for extra in ([], ["--epochs", "3"]):
        done = CliRunner().invoke(app, args + extra)
        assert done.exit_code == 0, done.output
    assert "epochs" not in calls[0] and calls[1]["epochs"] == 3


def test_tard_fuses_any_size_in_range():
    net = TardNet(size=(64, 128)).eval()
    fused = net.fuse(torch.rand(1, 1, 45, 77), torch.rand(1, 1, 45, 77))
    assert fused.shape == (1, 1, 45, 77) and 0 <= fused.min() and fused.max() <= 1


def test_fuse_tard_tiles_large_images(tmp_path):
    """`fuse fuse -m tard --tile` is accepted; tiles stay close to the whole-image fusion, which it leaves unchanged."""
    from typer.testing import CliRunner

    from fuse_cli.app import app

    args = ["fuse", "-m", "tard", *pair_folders(tmp_path)]
    for out, extra in (("whole", []), ("tiled", ["--tile", "64", "--tile-overlap", "16"])):
        done = CliRunner().invoke(app, [*args, "-o", str(tmp_path / out), *extra])
        assert done.exit_code == 0, done.output
    whole, tiled = (read_image(tmp_path / out / "p1.png") for out in ("whole", "tiled"))
    assert tiled.shape == whole.shape == (96, 144, 3)
    assert 0 < np.abs(tiled - whole).mean() < 0.02
    ir = luminance(read_image(tmp_path / "ir" / "p1.png"))
    vis = luminance(read_image(tmp_path / "vis" / "p1.png"))
    ir, vis = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None] for x in (ir, vis))
    assert torch.equal(tard_factory()(ir, vis), tard_factory(tile=256)(ir, vis))  # no tile needed: the same


def test_save_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    net = TardNet(size=(64, 128))
    for head in (*net.registration.msrb.predict, net.registration.msrb.fine_predict):
        torch.nn.init.normal_(head.weight, std=0.05)
    net.eval()
    save_state(net.registration, tmp_path / "r.safetensors", 8, (64, 128))
    save_state(net, tmp_path / "t.safetensors", 8, (64, 128))
    ir, vis = torch.rand(1, 1, 70, 90), torch.rand(1, 1, 70, 90)
    loaded = load_registration_net(tmp_path / "r.safetensors")
    assert loaded.size == (64, 128)
    assert torch.equal(loaded.estimate_grid(ir, vis), net.registration.estimate_grid(ir, vis))
    assert torch.equal(load_tard(tmp_path / "t.safetensors").fuse(ir, vis), net.fuse(ir, vis))
    folded = fold_batchnorm(copy.deepcopy(net))  # the factory folds BatchNorm for inference
    assert torch.equal(tard_factory("cpu", weights=tmp_path / "t.safetensors")(ir, vis), folded.fuse(ir, vis).clamp(0, 1))


@pytest.mark.skipif(not PACKAGED.is_file() or not TARD_WEIGHTS.is_file(), reason="packaged weights not built")
def test_packaged_net_runs_in_the_stage(tmp_path):
    rec = shifted_pair(tmp_path)
    for method in ("net", "net-ecc"):
        # min_confidence=0: this tiny synthetic shift is not what the network was trained on; the run is what is tested
        result = RegisterStage(tmp_path / method, method=method, min_confidence=0).process_one(rec)
        assert result["registration"]["path"] in ({"net"} if method == "net" else {"net+ecc", "net-affine"})
        assert np.load(result["grid"]).shape == (96, 144, 2)
        assert read_image(result["ir"]).shape == (96, 144)
    fused = tard_factory("cpu")(torch.rand(1, 1, 40, 60), torch.rand(1, 1, 40, 60))
    assert fused.shape == (1, 1, 40, 60)


@needs_data
@pytest.mark.skipif(not PACKAGED.is_file(), reason="packaged weights not built")
def test_packaged_net_reduces_error_on_real_pairs():
    """A guard against silent drift: the shipped network cuts EPE by 30 % or more on the first pairs."""
    stage = RegisterStage(Path("unused"), method="net")
    for pid in real_ids(3):
        deformation = np.load(UNALIGNED / "grid" / f"{pid}.npy")
        ir = read_image(UNALIGNED / "ir_warp" / f"{pid}.png")
        vis = luminance(read_image(UNALIGNED / "vis" / f"{pid}.png"))
        err, valid = residual_displacement(stage.estimate_grid(ir, vis), deformation)
        err0, valid0 = residual_displacement(identity(*vis.shape), deformation)
        assert err[valid].mean() < 0.7 * err0[valid0].mean(), pid


# --- training ------------------------------------------------------------------------------------


def test_training_deformation_is_undone_by_its_label():
    gen = torch.Generator().manual_seed(0)
    phi = random_correction(4, (64, 96), gen)
    inv = invert_grid(phi)
    ident = torch.from_numpy(identity(64, 96))[None]
    composed = F.grid_sample(phi.permute(0, 3, 1, 2), inv, padding_mode="border", align_corners=False).permute(0, 2, 3, 1)
    inside = (inv.abs() < 0.9).all(-1)
    assert ((composed - ident).abs()[inside].max() * 48) < 0.2  # pixels
    import random

    pairs = [torch.from_numpy(np.stack([scene(80, 120, 1), scene(80, 120, 2)]))]
    ir, vis, deformed, phi = make_batch(pairs * 2, [0, 1], (64, 96), random.Random(0), gen)
    back = F.grid_sample(deformed, phi, align_corners=False)
    assert ir.shape == vis.shape == deformed.shape == (2, 1, 64, 96)
    assert (back - ir).abs()[back > 0].mean() < 0.03


def _aligned_records(tmp_path) -> list[dict]:
    """Two aligned 80 x 128 synthetic pairs written under ``tmp_path``, as records."""
    recs = []
    for i in range(2):
        write_image(tmp_path / f"ir{i}.png", scene(80, 128, i))
        write_image(tmp_path / f"vis{i}.png", 1 - scene(80, 128, i))
        recs.append({"ir": str(tmp_path / f"ir{i}.png"), "vis": str(tmp_path / f"vis{i}.png")})
    return recs


def test_train_register_resumes_exactly_from_its_safetensors_checkpoint(tmp_path):
    """Two epochs in one run equal one epoch, a stop, and a resumed second epoch (weights, Adam, random streams)."""
    recs = _aligned_records(tmp_path)
    settings = {"fusion_epochs": 0, "batch_size": 2, "crop": 128, "progress": False, "log": lambda s: None}
    train_register(recs, tmp_path / "straight", epochs=2, **settings)
    train_register(recs, tmp_path / "stopped", epochs=1, **settings)
    assert sorted(p.name for p in (tmp_path / "stopped").iterdir()) == [
        "register.json", "register.safetensors", "tard.optim.safetensors", "tard.safetensors"]  # no pickle
    train_register(recs, tmp_path / "stopped", epochs=2, resume=tmp_path / "stopped" / "tard.safetensors", **settings)
    straight, resumed = (load_tard(tmp_path / run / "tard.safetensors").state_dict() for run in ("straight", "stopped"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_train_register_writes_weights_and_card(tmp_path):
    recs = _aligned_records(tmp_path)
    run = tmp_path / "run"
    path = train_register(recs, run, epochs=1, fusion_epochs=0, batch_size=2, crop=128, progress=False, log=lambda s: None)
    assert path == run / "register.safetensors"
    first = load_registration_net(path).state_dict()
    # resume, one more registration epoch and a fusion epoch
    train_register(recs, run, epochs=2, fusion_epochs=1, batch_size=2, crop=128, progress=False, log=lambda s: None,
                   resume=run / "tard.safetensors")
    import json

    card = json.loads((run / "register.json").read_text())
    assert card["epochs"] == 2 and card["fusion_epochs"] == 1 and card["data"]["pairs"] == 2
    assert [row["phase"] for row in card["history"]] == ["registration", "registration", "fusion"]
    net = load_registration_net(path)
    assert net.size == (64, 128)
    assert any(not torch.equal(v, first[k]) for k, v in net.state_dict().items())
    assert load_tard(run / "tard.safetensors").fuse(torch.rand(1, 1, 30, 40), torch.rand(1, 1, 30, 40)).shape[-1] == 40
    # fine-tune from those weights: the first step starts from them, and a resumed run still names them
    tuned = tmp_path / "tuned"
    train_register(recs, tuned, epochs=1, fusion_epochs=0, batch_size=2, crop=128, progress=False, log=lambda s: None,
                   init=run / "tard.safetensors", lr=1e-12)
    start = load_tard(run / "tard.safetensors").state_dict()
    assert all(torch.allclose(v.float(), start[k].float(), atol=1e-4) for k, v in load_tard(tuned / "tard.safetensors").state_dict().items()
               if "running" not in k and "num_batches" not in k)
    train_register(recs, tuned, epochs=2, fusion_epochs=0, batch_size=2, crop=128, progress=False, log=lambda s: None,
                   resume=tuned / "tard.safetensors")
    assert json.loads((tuned / "register.json").read_text())["init"] == "tard.safetensors"
