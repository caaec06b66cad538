"""``fuse encode`` (CLIP embeddings) and MGFusion (CLIP-guided fusion), offline.

No pretrained CLIP can be downloaded here, so every test uses a random CLIP
(``pretrained=None``, drawn from a fixed seed, so every process builds the same
one) and the small ``ViT-S-32`` architecture to stay fast on CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from stages.core.images import read_image, write_image
from fuse_cli.synthetic import make_pair

torch.set_num_threads(1)

CLIP = "ViT-S-32"  # E = 384, D = 384, 7 × 7 patch grid at 224 px
E, GRID, WIDTH = 384, 7, 384
SMALL = {"dim": 8, "blocks": 1, "heads": 2, "expansion": 2.0}
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def clip():
    from stages.nets.clip import load_clip

    return load_clip(CLIP, None)


@pytest.fixture(scope="module")
def encoder(clip):
    from stages.nets.clip import ClipImageEncoder

    return ClipImageEncoder(clip.visual, CLIP, None)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    """Three small pairs of odd sizes on disk: RGB visible, gray IR."""
    root = tmp_path_factory.mktemp("pairs")
    for index, (h, w) in enumerate([(45, 61), (45, 61), (52, 38)]):
        ir, vis = make_pair(seed=index, height=h, width=w)
        write_image(root / "ir" / f"p{index}.png", ir)
        write_image(root / "vis" / f"p{index}.png", vis)
    return root


def _records(root: Path) -> list[dict]:
    return [{"id": p.stem, "ir": str(p), "vis": str(root / "vis" / p.name)} for p in sorted((root / "ir").glob("*.png"))]


def test_encode_writes_documented_files(tmp_path, clip, pairs_dir):
    from stages.encode import EncodeStage
    from stages.nets.clip import embedding_metadata, load_embeddings

    records = _records(pairs_dir)
    records[0]["caption"] = "a person walking in front of a building at night"
    stage = EncodeStage(tmp_path, CLIP, None, images=("ir", "vis"), tokens=True, clip=clip)
    results = stage.process(records)
    assert all(isinstance(r, dict) for r in results), results
    for record, result in zip(records, results):
        path = Path(result["embedding"])
        assert path == tmp_path / f"{record['id']}.safetensors" and path.is_file()
        tensors = load_embeddings(path)
        expected = {"ir", "vis", "ir_tokens", "vis_tokens"} | ({"text"} if "caption" in record else set())
        assert set(tensors) == expected
        for key in ("ir", "vis"):
            assert tensors[key].shape == (E,) and tensors[key].dtype == torch.float32
            assert tensors[f"{key}_tokens"].shape == (GRID, GRID, WIDTH)
            assert torch.isfinite(tensors[key]).all()
        if "caption" in record:
            assert tensors["text"].shape == (E,)
        meta = embedding_metadata(path)
        assert meta["model"] == CLIP and meta["pretrained"] == "none" and meta["images"] == "ir,vis"
    assert not list(tmp_path.glob(".*part*")), "no temporary file left behind"
    assert stage.skip_update(records[0]) == {"embedding": str(tmp_path / "p0.safetensors")}


def test_encode_errors_name_the_pair(tmp_path, clip, pairs_dir):
    from stages.core.stage import StageError
    from stages.encode import EncodeStage

    good, bad = _records(pairs_dir)[:2]
    bad = {**bad, "vis": str(pairs_dir / "vis" / "missing.png")}
    results = EncodeStage(tmp_path, CLIP, None, images=("ir", "vis", "fused"), clip=clip).process([good, bad])
    assert all(isinstance(r, StageError) for r in results)  # neither record has "fused"
    assert "p0" in str(results[0]) and "fused" in str(results[0])
    results = EncodeStage(tmp_path, CLIP, None, clip=clip).process([good, bad])
    assert isinstance(results[0], dict)
    assert isinstance(results[1], StageError) and "p1" in str(results[1]) and "missing.png" in str(results[1])


def test_batching_gives_the_same_embeddings(clip, pairs_dir):
    from stages.encode import EncodeStage, _to_tensor

    images = [_to_tensor(read_image(p)) for p in sorted((pairs_dir / "vis").glob("*.png"))]
    images += [_to_tensor(read_image(p)) for p in sorted((pairs_dir / "ir").glob("*.png"))]
    batched, _ = EncodeStage(Path("unused"), CLIP, None, batch_size=len(images), clip=clip).embed_images(images)
    single, _ = EncodeStage(Path("unused"), CLIP, None, batch_size=1, clip=clip).embed_images(images)
    for a, b in zip(batched, single):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_encode_command_end_to_end(tmp_path, pairs_dir):
    from typer.testing import CliRunner

    from fuse_cli.app import app

    runner = CliRunner()
    out = tmp_path / "emb"
    args = ["encode", "--ir", str(pairs_dir / "ir"), "--vis", str(pairs_dir / "vis"), "-o", str(out),
            "--model", CLIP, "--pretrained", "none", "--device", "cpu", "-b", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [r["id"] for r in records] == ["p0", "p1", "p2"]
    assert all(Path(r["embedding"]).is_file() for r in records)
    again = runner.invoke(app, [*args, "-v"])  # incremental: outputs exist, skipped
    assert again.exit_code == 0 and "skipped" in again.stderr
    assert [json.loads(line)["embedding"] for line in again.stdout.splitlines()] == [r["embedding"] for r in records]
    bad = runner.invoke(app, [*args, "--image", "ir,depth"])
    assert bad.exit_code == 2 and "--image" in bad.stderr
    bad = runner.invoke(app, [*args, "--pretrained", "no-such-tag"])
    assert bad.exit_code == 2 and "no-such-tag" in bad.stderr


def test_mgfusion_shapes_on_odd_sizes(encoder):
    from stages.nets.mgfusion import MGFusion

    torch.manual_seed(0)
    model = MGFusion(**SMALL, clip=encoder).eval()
    ir, vis = torch.rand(2, 1, 37, 51), torch.rand(2, 1, 37, 51)
    with torch.no_grad():
        fused = model(ir, vis)
        given = model(ir, vis, clip_ir=encoder(ir), clip_vis=encoder(vis))
    assert fused.shape == (2, 1, 37, 51) and 0 <= fused.min() and fused.max() <= 1
    torch.testing.assert_close(fused, given)
    with pytest.raises(ValueError, match="same shape"):
        model(ir, vis[..., :50])


def test_gradients_reach_only_trainable_parts(encoder):
    from stages.nets.mgfusion import MGFusion, mgfusion_loss

    torch.manual_seed(0)
    model = MGFusion(**SMALL, clip=encoder).train()
    assert not model.clip.training, "the frozen CLIP stays in eval mode"
    assert not any(p.requires_grad for p in model.clip.parameters())
    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    trainable_before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    ir, vis = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    loss = mgfusion_loss(model(ir, vis, vis_rgb=vis.repeat(1, 3, 1, 1)), ir, vis)
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in model.clip.parameters())
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert all(torch.equal(v, clip_before[k]) for k, v in model.clip.state_dict().items())
    changed = [k for k, v in model.trainable_state_dict().items() if not torch.equal(v, trainable_before[k])]
    assert "cii_ir.mix" in changed and "cff.ira.fc1.weight" in changed and "decoder.reconstruct.weight" in changed
    assert set(model.trainable_state_dict()) == {k for k in model.state_dict() if not k.startswith("clip.")}


def test_learning_rate_schedule():
    from stages.training.mgfusion import lr_at

    assert lr_at(0, 100, 1e-3) == pytest.approx(1e-4)
    assert lr_at(20, 100, 1e-3) == pytest.approx(1e-3)
    assert lr_at(100, 100, 1e-3) == pytest.approx(1e-4)
    assert lr_at(10, 100, 1e-3) < lr_at(20, 100, 1e-3) > lr_at(30, 100, 1e-3)


def _training_pairs(tmp_path: Path) -> list[tuple[str, str]]:
    roadscene = DATA / "roadscene"
    if roadscene.is_dir():
        names = sorted(p.name for p in (roadscene / "ir").iterdir())[:2]
        return [(str(roadscene / "ir" / n), str(roadscene / "vis" / n)) for n in names]
    # ../shared/data is absent (a user's clone): train on generated pairs instead.
    pairs = []
    for index in range(2):
        ir, vis = make_pair(seed=index, height=80, width=96)
        write_image(tmp_path / "ir" / f"s{index}.png", ir)
        write_image(tmp_path / "vis" / f"s{index}.png", vis)
        pairs.append((str(tmp_path / "ir" / f"s{index}.png"), str(tmp_path / "vis" / f"s{index}.png")))
    return pairs


def test_tiny_training_run_saves_a_reloadable_checkpoint(tmp_path, clip, pairs_dir):
    from stages.encode import EncodeStage
    from stages.fuse import load_pair
    from stages.training.mgfusion import train_mgfusion
    from stages.methods.mgfusion import MGFusionFuser, load_mgfusion, mgfusion_factory
    from stages.nets.mgfusion import checkpoint_clip

    lines = []
    path = train_mgfusion(_training_pairs(tmp_path), tmp_path / "runs", epochs=1, batch_size=1, lr=1e-3, seed=0,
                          device="cpu", crop=64, clip_model=CLIP, pretrained=None, config=SMALL, max_steps=2,
                          progress=False, log=lines.append)
    assert path == tmp_path / "runs" / "mgfusion.safetensors" and path.is_file()
    assert (tmp_path / "runs" / "mgfusion.optim.safetensors").is_file() and len(lines) == 1
    card = json.loads((tmp_path / "runs" / "mgfusion.json").read_text())
    assert card["clip"]["model"] == CLIP and card["clip"]["pretrained"] == "none" and card["epochs"] == 1
    assert checkpoint_clip(path) == (CLIP, None)
    with safe_open(str(path), framework="pt") as f:
        assert not any(k.startswith("clip.") for k in f.keys()), "the frozen CLIP is not saved"  # noqa: SIM118

    record = _records(pairs_dir)[2]  # 38 × 52, odd
    ir_np, vis_np = load_pair(record)
    ir, vis_rgb = torch.from_numpy(ir_np)[None, None], torch.from_numpy(vis_np).permute(2, 0, 1)[None]
    vis = (vis_rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    fuser = mgfusion_factory("cpu", weights=path)
    first = fuser(ir, vis, vis_rgb=vis_rgb)
    second = mgfusion_factory("cpu", weights=path)(ir, vis, vis_rgb=vis_rgb)
    assert first.shape == ir.shape and torch.equal(first, second)

    # Stored `fuse encode` embeddings (same CLIP) give the same result as computing them on the fly.
    emb = EncodeStage(tmp_path / "emb", CLIP, None, clip=clip).process([record])[0]
    from_file = fuser(ir, vis, vis_rgb=vis_rgb, records=[{"embedding": emb["embedding"]}])
    torch.testing.assert_close(from_file, first, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="does not exist"):
        fuser(ir, vis, records=[{"embedding": str(tmp_path / "nope.safetensors")}])

    tiled = MGFusionFuser(fuser.model, "cpu", tile=32, tile_overlap=8)(ir, vis, vis_rgb=vis_rgb)
    assert tiled.shape == ir.shape and 0 <= tiled.min() and tiled.max() <= 1
    with pytest.raises(ValueError, match="trained with CLIP"):
        load_mgfusion(path, clip_model="ViT-B-32")

    resumed = train_mgfusion(_training_pairs(tmp_path), tmp_path / "runs", epochs=2, batch_size=1, crop=64,
                             resume=path, config=SMALL, max_steps=1, progress=False, log=lines.append)
    assert json.loads((tmp_path / "runs" / "mgfusion.json").read_text())["epochs"] == 2 and resumed == path


def test_no_weights_says_what_to_run(tmp_path, monkeypatch):
    import stages.methods.learned as learned
    import stages.methods.mgfusion as mg

    monkeypatch.setattr(learned, "WEIGHTS_DIR", tmp_path)  # nothing shipped
    with pytest.raises(FileNotFoundError) as info:
        mg.mgfusion_factory("cpu")
    message = str(info.value)
    assert "fuse train -m mgfusion --pretrained openai --ir DIR --vis DIR -o runs/" in message
    assert "fuse fuse -m mgfusion --weights runs/mgfusion.safetensors" in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mg.mgfusion_factory("cpu", weights=tmp_path / "absent.safetensors")
