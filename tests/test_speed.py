"""The fast paths give the results of the plain ones (correctness only; speed is measured in benchmarks/)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from stages.core.images import write_image
from stages.metrics import METRICS
from stages.score import ScoreStage
from conftest import SHARED_DATA, fuse_cli, shared


@pytest.fixture(scope="module")
def scored_records(synthetic_pairs, tmp_path_factory) -> list[dict]:
    """Records of the generated pairs with a mean fusion written beside them, plus one whose fused file is missing."""
    from stages.core.images import read_image
    from stages.core.records import pair_directories

    out = tmp_path_factory.mktemp("fused")
    records = pair_directories({"ir": synthetic_pairs / "ir", "vis": synthetic_pairs / "vis"}).records
    for record in records:
        ir, vis = read_image(record["ir"]), read_image(record["vis"])
        write_image(out / f"{record['id']}.png", (ir[..., None] + vis) / 2)
        record["fused"] = str(out / f"{record['id']}.png")
    return [*records, {**records[0], "id": "missing", "fused": str(out / "missing.png")}]


def test_parallel_scoring_equals_serial_in_any_order(scored_records):
    names = list(METRICS)
    serial = {r["id"]: ScoreStage(names, "mmif").process([r])[0] for r in scored_records}
    shuffled = scored_records[:]
    random.Random(1).shuffle(shuffled)
    stage = ScoreStage(names, "mmif", workers=2)
    parallel = stage.process(shuffled)
    assert len(parallel) == len(shuffled)
    for record, result in zip(shuffled, parallel):
        expected = serial[record["id"]]
        if isinstance(expected, Exception):
            assert type(result) is type(expected) and str(result) == str(expected)
        else:
            assert result == expected  # the same floats, bit for bit
    assert stage.process(shuffled[:2]) == [serial[r["id"]] for r in shuffled[:2]]  # the pool is reused


def test_score_workers_cli_keeps_values_and_row_order(scored_records, tmp_path):
    records = [r for r in scored_records if r["id"] != "missing"]
    random.Random(2).shuffle(records)
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    serial = fuse_cli("score", "--records", path, "--metrics", "EN,Qabf,VIF")
    parallel = fuse_cli("score", "--records", path, "--metrics", "EN,Qabf,VIF", "--workers", "2")
    assert serial.returncode == parallel.returncode == 0, serial.stderr + parallel.stderr
    assert parallel.stdout == serial.stdout
    assert [line.split(",")[0] for line in serial.stdout.splitlines()[1:-1]] == [r["id"] for r in records]


@pytest.mark.parametrize("shape,bit_depth", [((37, 53), 8), ((37, 53, 3), 8), ((37, 53), 16)])
def test_fast_png_round_trips_exactly(tmp_path, shape, bit_depth):
    from stages.core.images import PNG_COMPRESSION, read_image

    top = 2 ** bit_depth - 1
    img = np.random.default_rng(0).integers(0, top + 1, size=shape).astype(np.float64) / top
    img.flat[:2] = 0.0, 1.0  # full range, so a 16-bit file is read as value / 65535
    sizes = {}
    for level in (PNG_COMPRESSION, 9):
        path = tmp_path / f"level{level}.png"
        write_image(path, img, bit_depth, png_compression=level)
        assert np.array_equal(np.rint(read_image(path).astype(np.float64) * top), np.rint(img * top))
        sizes[level] = path.stat().st_size
    assert PNG_COMPRESSION == 1 and sizes[9] <= sizes[1]


def test_opencv_classical_methods_match_kornia_definitions():
    """laplacian and gff filter with OpenCV; kornia's pyramid, box and guided filters give the same images."""
    import torch
    from kornia.filters import box_blur, gaussian_blur2d, guided_blur, laplacian
    from kornia.geometry.transform import pyrdown, pyrup

    from stages.methods.classical import fuse_gff, fuse_laplacian

    torch.manual_seed(0)
    ir, vis = torch.rand(2, 1, 67, 90), torch.rand(2, 1, 67, 90)

    def pyramid(x, levels):
        bands = []
        for _ in range(levels - 1):
            down = pyrdown(x)
            up = pyrup(down)[..., : x.shape[-2], : x.shape[-1]]
            up = torch.nn.functional.pad(up, (0, x.shape[-1] - up.shape[-1], 0, x.shape[-2] - up.shape[-2]),
                                         mode="replicate")
            bands.append(x - up)
            x = down
        return bands + [x]

    bands_ir, bands_vis = pyramid(ir, 4), pyramid(vis, 4)
    current = (bands_ir[-1] + bands_vis[-1]) / 2
    for a, b in reversed(list(zip(bands_ir[:-1], bands_vis[:-1]))):
        up = pyrup(current)[..., : a.shape[-2], : a.shape[-1]]
        up = torch.nn.functional.pad(up, (0, a.shape[-1] - up.shape[-1], 0, a.shape[-2] - up.shape[-2]),
                                     mode="replicate")
        current = torch.where(a.abs() >= b.abs(), a, b) + up
    assert torch.allclose(fuse_laplacian(ir, vis, levels=4), current.clamp(0, 1), atol=1e-5)

    sources = torch.cat([ir, vis], 1)
    base = box_blur(sources, (31, 31), border_type="replicate")
    saliency = gaussian_blur2d(laplacian(sources, 3).abs(), (11, 11), (5.0, 5.0), border_type="replicate")
    winner = torch.nn.functional.one_hot(saliency.argmax(1), 2).permute(0, 3, 1, 2).float()

    def refine(size, eps):
        w = guided_blur(sources.reshape(-1, 1, 67, 90), winner.reshape(-1, 1, 67, 90), size, eps,
                        border_type="replicate").reshape(sources.shape).clamp_min(0)
        return w / w.sum(1, keepdim=True).clamp_min(1e-12)

    expected = (refine(67, 0.3) * base).sum(1, keepdim=True) + (refine(15, 1e-6) * (sources - base)).sum(1, keepdim=True)
    assert torch.allclose(fuse_gff(ir, vis), expected.clamp(0, 1), atol=1e-5)


@pytest.mark.parametrize("method", ["refinefuse", "dfh-base", "textdfh", "tesg"])
def test_shipped_fusers_match_the_plain_network(method):
    """The fusers run the networks with BatchNorm folded into the convolutions (and channels-last); the fused
    images stay within 1e-5 of the plain network's (NCHW, BatchNorm kept, as trained)."""
    import torch

    from stages.methods.learned import load_network
    from stages.methods.registry import get_method

    fuse = get_method(method).factory(device="cpu")
    assert fuse.memory_format == torch.channels_last
    assert fuse.model.state_dict()[next(k for k, v in fuse.model.state_dict().items() if v.ndim == 4)].is_contiguous(
        memory_format=torch.channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fuse.model.modules())
    plain = load_network(method)
    torch.manual_seed(0)
    ir, vis = torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96)
    text = {"text": torch.randn(1, 6, 384)} if method in ("textdfh", "tesg") else {}
    if method == "tesg":
        text["mask"] = (torch.rand(1, 1, 64, 96) > 0.7).float()
    shipped = fuse(ir, vis, **text)
    with torch.inference_mode():
        eager = plain(ir, vis, **text).clamp(0, 1)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()) == (method in ("dfh-base", "textdfh"))
    assert torch.allclose(shipped, eager, rtol=0, atol=1e-5)


def test_registration_with_folded_batchnorm_matches_the_plain_network():
    """fuse register -m net and tard fold BatchNorm too: the fields and the fused image stay within 1e-5 px / grey."""
    import torch

    from stages.methods.registry import get_method
    from stages.nets.inference import fold_batchnorm
    from stages.nets.registration import load_registration_net
    from stages.nets.tard import load_tard

    torch.manual_seed(1)
    ir, vis = torch.rand(1, 1, 96, 160), torch.rand(1, 1, 96, 160)
    plain = load_registration_net()
    folded = fold_batchnorm(load_registration_net())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        assert torch.allclose(folded.estimate_field(ir, vis), plain.estimate_field(ir, vis), rtol=0, atol=1e-5)
        expected = load_tard().fuse(ir, vis).clamp(0, 1)
    assert torch.allclose(get_method("tard").factory(device="cpu")(ir, vis), expected, rtol=0, atol=1e-5)


def test_keeping_chroma_equals_the_ycbcr_round_trip_on_real_pairs():
    """fuse_images swaps VIS's luminance for the fused one directly: kornia's YCbCr there and back gives that image."""
    import torch
    from kornia.color import rgb_to_ycbcr, ycbcr_to_rgb

    from stages.core.images import to_uint8
    from stages.fuse import FuseStage, load_pair

    msrs = shared("msrs")
    for pair in sorted(p.stem for p in (msrs / "vis").glob("*.png"))[:4]:
        ir, vis = load_pair({"id": pair, **{m: str(msrs / m / f"{pair}.png") for m in ("ir", "vis")}})
        assert vis.ndim == 3
        for method in ("max", "gff"):
            stage = FuseStage(Path("unused"), method)
            fused = stage.fuse_images([ir], [vis])[0]
            ycbcr = rgb_to_ycbcr(torch.from_numpy(vis).permute(2, 0, 1))
            fused_y = stage.fuse_luma(ir[None, None], ycbcr[None, :1].numpy())[0, 0]
            ycbcr[0] = torch.from_numpy(np.clip(fused_y, 0, 1))
            expected = ycbcr_to_rgb(ycbcr).clamp(0, 1).permute(1, 2, 0).numpy()
            diff = np.abs(to_uint8(fused).astype(int) - to_uint8(expected))
            assert diff.max() <= 1 and diff.mean() < 1e-3, (pair, method, diff.max(), diff.mean())


def _png_kinds(folder: Path) -> list[Path]:
    """PNGs of every colour type and bit depth, with transparency, gamma or EXIF orientation, as Pillow writes them."""
    from PIL import Image, PngImagePlugin

    rgb = np.random.default_rng(0).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    gray = Image.fromarray(rgb[..., 0])
    images = {"gray": gray, "rgb": Image.fromarray(rgb), "rgba": Image.fromarray(np.dstack([rgb, rgb[..., 1]])),
              "gray_alpha": gray.convert("LA"), "palette": Image.fromarray(rgb).quantize(16),
              "bilevel": Image.fromarray(rgb[..., 0] > 128),
              "gray16": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
              "gray_as_rgb": Image.fromarray(np.repeat(rgb[..., :1], 3, -1))}
    for name, image in images.items():
        image.save(folder / f"{name}.png")
    gamma = PngImagePlugin.PngInfo()
    gamma.add(b"gAMA", (45455).to_bytes(4, "big"))
    images["rgb"].save(folder / "rgb_gamma.png", pnginfo=gamma)
    images["rgb"].save(folder / "rgb_transparent.png", transparency=(1, 2, 3))
    gray.save(folder / "gray_transparent.png", transparency=7)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90°": neither reader applies it
    images["rgb"].save(folder / "rgb_exif_rotated.png", exif=exif)
    gray.point(lambda v: v // 16 * 16).save(folder / "gray4.png", bits=4)
    unended = folder / "rgb_without_iend.png"  # the chunk check refuses it; Pillow reads it, as before
    unended.write_bytes((folder / "rgb.png").read_bytes()[:-12])
    return sorted(folder.glob("*.png"))


def test_png_reading_gives_pillows_pixels(tmp_path):
    """Plain 8-bit PNGs, decoded by OpenCV, give Pillow's pixels exactly: read_uint8 as decoded, read_image / 255."""
    import imageio.v3 as iio

    from stages.core.images import _channels, _normalise, read_image, read_uint8, to_uint8

    msrs = SHARED_DATA / "msrs"
    real = [msrs / m / "00004N.png" for m in ("ir", "vis")] if msrs.is_dir() else []
    for path in _png_kinds(tmp_path) + real:
        pillow = _channels(iio.imread(path), path)
        as_read = pillow.astype(np.float32) / 255 if pillow.dtype == np.uint8 else _normalise(pillow, path)
        assert np.array_equal(read_image(path), as_read), path.name
        assert np.array_equal(read_uint8(path), pillow if pillow.dtype == np.uint8 else to_uint8(as_read)), path.name


def test_a_damaged_png_is_refused_without_libpngs_own_error_line(tmp_path, capfd):
    """A flipped byte in the pixel data: one ImageError naming the file, and nothing printed by libpng."""
    import imageio.v3 as iio

    from stages.core.images import ImageError, read_image

    good = tmp_path / "good.png"
    iio.imwrite(good, np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside IDAT: its CRC no longer matches
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="damaged.png"):
        read_image(damaged)
    assert "libpng" not in capfd.readouterr().err
