"""Every learned method of the registry: gradients; every network the generic loop trains on small inputs: shapes,
training, checkpoints, determinism, tiling and the missing-weights message."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from stages.methods import learned
from stages.methods.learned import NetworkFuser, load_network
from stages.methods.specs import LEARNED as SPECS
from stages.nets.checkpoint import save_weights
from stages.methods.registry import list_methods
from stages.nets.text_features import MINILM_DIM
from stages.training.loop import load_pair, train

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ROADSCENE = DATA / "roadscene"
needs_data = pytest.mark.skipif(not (ROADSCENE / "ir").is_dir(),
                                reason=f"real pairs not found at {ROADSCENE} (../shared/data is absent)")

NAMES = sorted(name for name, spec in SPECS.items() if spec.trainer == "stages.training.loop:train")
LEARNED = [m.name for m in list_methods("learned")]


def fresh_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SPECS[name].model()


def synthetic_pair(h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, h, w, generator=gen), torch.rand(1, 1, h, w, generator=gen)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(37, 53), (16, 16), (5, 70)])
def test_fuser_keeps_any_size(name, size):
    ir, vis = synthetic_pair(*size)
    fused = NetworkFuser(fresh_model(name), "cpu")(ir, vis)
    assert fused.shape == ir.shape
    assert fused.dtype == torch.float32
    assert 0.0 <= float(fused.min()) and float(fused.max()) <= 1.0


def network_and_loss(name: str) -> tuple[nn.Module, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]]:
    """A fresh small network of the learned method ``name`` and ``loss(model, ir, vis)``, its training loss.

    ``ir``, ``vis``: ``(2, 1, 64, 128)``. Every learned method in the registry needs a case here.
    """
    gen = torch.Generator().manual_seed(1)
    text = torch.randn(2, 5, MINILM_DIM, generator=gen)
    if name in NAMES:
        spec = SPECS[name]
        return spec.model(), lambda m, ir, vis: spec.loss_fn(m(ir, vis), ir, vis)
    if name == "tesg":
        from stages.nets.tesg import TeSG, tesg_loss

        return TeSG(), lambda m, ir, vis: tesg_loss(m(ir, vis, mask=(ir > 0.5).float(), text=text), ir, vis,
                                                    (ir > 0.5).float())
    if name == "textdfh":
        from stages.nets.dfh_base import dfh_loss
        from stages.nets.textdfh import TextDFH

        return TextDFH(), lambda m, ir, vis: dfh_loss(m(ir, vis, text=text), ir, vis)
    if name == "mgfusion":
        pytest.importorskip("open_clip", reason="mgfusion needs the clip extra")
        from stages.nets.clip import ClipImageEncoder, load_clip
        from stages.nets.mgfusion import MGFusion, mgfusion_loss

        clip = ClipImageEncoder(load_clip("ViT-S-32", None).visual, "ViT-S-32", None)  # random weights, offline
        return MGFusion(dim=8, blocks=1, heads=2, clip=clip), lambda m, ir, vis: mgfusion_loss(m(ir, vis), ir, vis)
    if name == "tard":  # both training phases: registration (l_c + 10 l_reg), then fusion (l_s + 5 l_f)
        import random

        from stages.nets.tard import TardNet
        from stages.training.registration import fusion_losses, invert_grid, random_correction, registration_losses

        def tard_loss(m, ir, vis):
            phi = random_correction(ir.shape[0], ir.shape[-2:], torch.Generator().manual_seed(2))
            deformed = F.grid_sample(ir, invert_grid(phi), align_corners=False)
            return (registration_losses(m, ir, vis, deformed, phi)["total"]
                    + fusion_losses(m, ir, vis, deformed, phi, random.Random(0))["total"])

        return TardNet(size=(64, 128)), tard_loss
    raise AssertionError(f"learned method {name!r} has no case in network_and_loss: add one")


@pytest.mark.parametrize("name", LEARNED)
def test_gradients_reach_every_trainable_parameter(name):
    """Forward and backward on a small pair; frozen parts (CLIP, Text-DFH's base) get none.

    Zero-initialised layers (residual branches, registration heads) pass no gradient
    upstream at first, so after one SGD step every trainable parameter's must be non-zero.
    """
    torch.manual_seed(0)
    model, loss = network_and_loss(name)
    model.train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    ir, vis = synthetic_pair(64, 128)
    ir, vis = torch.cat([ir, vis.flip(-1)]), torch.cat([vis, ir.flip(-1)])
    optimizer = torch.optim.SGD(trainable.values(), lr=0.1)
    for step in range(2):
        optimizer.zero_grad()
        loss(model, ir, vis).backward()
        for pname, param in model.named_parameters():
            if pname not in trainable:
                assert param.grad is None, f"frozen {pname} got a gradient"
                continue
            assert param.grad is not None, f"{pname} got no gradient"
            assert torch.isfinite(param.grad).all(), f"{pname} has a non-finite gradient"
            assert step == 0 or param.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
        optimizer.step()


@needs_data
@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_on_a_real_crop(name):
    ir_np, vis_np = load_pair(ROADSCENE / "ir" / "FLIR_00006.jpg", ROADSCENE / "vis" / "FLIR_00006.jpg")
    ir = torch.from_numpy(ir_np[100:164, 150:214].copy())[None, None]
    vis = torch.from_numpy(vis_np[100:164, 150:214].copy())[None, None]
    model = fresh_model(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = SPECS[name].loss_fn(model(ir, vis), ir, vis)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.95 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_gives_identical_outputs(name, tmp_path):
    model = fresh_model(name).eval()
    ir, vis = synthetic_pair(32, 32)
    path = save_weights(model, name, tmp_path / f"{name}.safetensors")
    loaded = load_network(name, path)
    with torch.inference_mode():
        assert torch.equal(model(ir, vis), loaded(ir, vis))
    assert loaded.config == model.config


def test_checkpoint_of_another_network_is_refused(tmp_path):
    path = save_weights(fresh_model("dfh-base"), "dfh-base", tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="dfh-base"):
        load_network("refinefuse", path)


@pytest.mark.parametrize("name", NAMES)
def test_missing_weights_say_how_to_train(name, tmp_path, monkeypatch):
    monkeypatch.setattr(learned, "WEIGHTS_DIR", tmp_path)
    factory = {"refinefuse": learned.refinefuse, "dfh-base": learned.dfh_base}[name]
    with pytest.raises(FileNotFoundError, match=f"run `fuse train -m {name}`"):
        factory(device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        factory(device="cpu", weights=tmp_path / "nothing.safetensors")


class _PixelMean(nn.Module):
    """Stand-in network: the pixel-wise mean, so tiled and whole fusion must agree exactly."""

    multiple = 16

    def forward(self, ir, vis):
        return (ir + vis) / 2


def test_tiles_blend_without_seams():
    ir, vis = synthetic_pair(150, 230)
    whole = NetworkFuser(_PixelMean(), tile=None)(ir, vis)
    tiled = NetworkFuser(_PixelMean(), tile=64, tile_overlap=16)(ir, vis)
    assert tiled.shape == ir.shape
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)


def test_tiled_network_stays_close_to_whole():
    ir, vis = synthetic_pair(96, 160)
    model = fresh_model("dfh-base")
    whole = NetworkFuser(model, tile=None)(ir, vis)
    tiled = NetworkFuser(model, tile=64, tile_overlap=16)(ir, vis)
    assert (tiled - whole).abs().mean() < 1e-3


def _write_pairs(folder: Path, count: int) -> list[tuple[Path, Path]]:
    rng = np.random.default_rng(1)
    pairs = []
    for modality in ("ir", "vis"):
        (folder / modality).mkdir(parents=True)
    for i in range(count):
        base = rng.integers(0, 256, (40, 44), dtype=np.uint8)
        iio.imwrite(folder / "ir" / f"{i}.png", base)
        iio.imwrite(folder / "vis" / f"{i}.png", np.stack([np.flipud(base)] * 3, axis=-1))
        pairs.append((folder / "ir" / f"{i}.png", folder / "vis" / f"{i}.png"))
    return pairs


def _train_quietly(name, pairs, out, epochs, resume=None):
    return train(name, pairs, out, epochs=epochs, batch_size=2, lr=1e-3, seed=3, crop=32,
                 resume=resume, progress=False, log=lambda line: None)


@pytest.mark.parametrize("name", NAMES)
def test_training_is_seeded_and_resumable(name, tmp_path):
    pairs = _write_pairs(tmp_path / "toy", 3)
    straight = load_file(_train_quietly(name, pairs, tmp_path / "a", epochs=2))
    again = load_file(_train_quietly(name, pairs, tmp_path / "b", epochs=2))
    first = _train_quietly(name, pairs, tmp_path / "c", epochs=1)
    resumed = load_file(_train_quietly(name, pairs, tmp_path / "c", epochs=2, resume=first))
    for key, value in straight.items():
        assert torch.equal(value, again[key]), f"{key} differs between two seeded runs"
        assert torch.equal(value, resumed[key]), f"{key} differs after resuming"
    card = (tmp_path / "c" / f"{name}.json").read_text()
    assert '"epochs": 2' in card and '"toy": 3' in card


@pytest.mark.parametrize("name", NAMES)
def test_shipped_weights_fuse_a_real_pair(name):
    if not (learned.WEIGHTS_DIR / f"{name}.safetensors").is_file():
        pytest.skip(f"no shipped weights for {name} yet (run `fuse train -m {name}`)")
    if not (ROADSCENE / "ir").is_dir():
        pytest.skip(f"real pairs not found at {ROADSCENE}")
    ir_np, vis_np = load_pair(ROADSCENE / "ir" / "FLIR_00006.jpg", ROADSCENE / "vis" / "FLIR_00006.jpg")
    ir, vis = torch.from_numpy(ir_np)[None, None], torch.from_numpy(vis_np)[None, None]
    fused = learned.load_fuser(name, "cpu")(ir, vis)
    assert fused.shape == ir.shape
    assert 0.02 < float(fused.std()) and 0.05 < float(fused.mean()) < 0.95


def test_low_light_darkens_only_the_chosen_samples():
    from stages.training.loop import darken_as_night

    gen = torch.Generator().manual_seed(0)
    ir, vis = torch.rand(64, 1, 8, 8, generator=gen), torch.rand(64, 1, 8, 8, generator=gen)
    same = darken_as_night(ir, vis, np.random.default_rng(0), 0.0)
    assert torch.equal(same[0], ir) and torch.equal(same[1], vis)
    dark_ir, dark_vis = darken_as_night(ir, vis, np.random.default_rng(0), 0.5)
    changed = [not torch.equal(d, v) for d, v in zip(dark_vis, vis)]
    assert 16 < sum(changed) < 48  # about half the samples
    for d, v, di, i, c in zip(dark_vis, vis, dark_ir, ir, changed):
        assert c == (not torch.equal(di, i))  # IR darkened with its VIS
        assert not c or (float(d.max()) <= 0.6 * float(v.max()) + 1e-6 and float(di.max()) <= float(i.max()))


def test_low_light_training_changes_the_weights_and_is_recorded_in_the_card(tmp_path):
    pairs = _write_pairs(tmp_path / "toy", 3)
    plain = load_file(_train_quietly("dfh-base", pairs, tmp_path / "a", epochs=1))
    night = train("dfh-base", pairs, tmp_path / "b", epochs=1, batch_size=2, lr=1e-3, seed=3, crop=32,
                  progress=False, log=lambda line: None, low_light=1.0)
    assert any(not torch.equal(v, load_file(night)[k]) for k, v in plain.items())
    assert "low light (p=1" in (tmp_path / "b" / "dfh-base.json").read_text()
