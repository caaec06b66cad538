"""The training loop's data path: pairs held as uint8, crops that move every array of a pair alike,
RefineFuse's salient targets from segmentation labels (estimated where a pair has none), prefetching."""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stages.training.loop import UNLABELLED, load_training_pair, prefetch, random_crop_batch, salient_targets, train

torch.set_num_threads(1)


def _write_set(root: Path, count: int, labels: bool, seed: int = 0) -> list[tuple[Path, Path]]:
    """``root/{ir,vis}/<id>.png`` (48×40) and, with ``labels``, ``root/segmentation/<id>.png`` (MSRS class ids)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(count):
        for folder in ("ir", "vis", *(("segmentation",) if labels else ())):
            (root / folder).mkdir(parents=True, exist_ok=True)
        ir = rng.integers(0, 120, (40, 48), dtype=np.uint8)
        vis = rng.integers(0, 255, (40, 48), dtype=np.uint8)
        iio.imwrite(root / "ir" / f"p{i}.png", ir)
        iio.imwrite(root / "vis" / f"p{i}.png", vis)
        if labels:
            classes = np.zeros((40, 48), np.uint8)
            classes[5:15, 5:20] = 2  # a person the IR does not show as warm
            classes[20:30, 30:40] = 4  # a curve: not a thermal target
            iio.imwrite(root / "segmentation" / f"p{i}.png", classes)
        pairs.append((root / "ir" / f"p{i}.png", root / "vis" / f"p{i}.png"))
    return pairs


def test_crops_move_every_array_of_a_pair_alike():
    rng = np.random.default_rng(1)
    images = []
    for _ in range(6):
        ir = rng.integers(0, 256, (30, 50), dtype=np.uint8)
        images.append((ir, 255 - ir, (ir > 128).astype(np.uint8)))
    ir, vis, mask, crops = random_crop_batch(images, 24, np.random.default_rng(0), with_crops=True)
    assert ir.shape == (6, 1, 24, 24) and ir.dtype == torch.uint8
    assert torch.equal(vis, 255 - ir) and torch.equal(mask, (ir > 128).to(torch.uint8))
    assert len({(c.x, c.y, c.hflip, c.vflip, c.rot90) for c in crops}) > 1  # the draws differ between samples


def test_segmentation_labels_give_the_thermal_target_classes(tmp_path):
    (ir_path, vis_path), = _write_set(tmp_path / "labelled", 1, labels=True)
    ir, vis, mask = load_training_pair(ir_path, vis_path)
    assert ir.dtype == vis.dtype == mask.dtype == np.uint8
    expected = np.zeros((40, 48), np.uint8)
    expected[5:15, 5:20] = 1  # person → salient; the curve (class 4) is not
    assert np.array_equal(mask, expected)
    (ir_path, vis_path), = _write_set(tmp_path / "plain", 1, labels=False)
    assert len(load_training_pair(ir_path, vis_path)) == 2


def test_salient_targets_take_labels_where_known_and_estimate_elsewhere():
    from stages.nets.losses import salient_mask

    ir = torch.zeros(2, 1, 32, 32)
    ir[:, :, 4:16, 4:16] = 1.0  # a warm square, which the estimate finds
    labels = torch.full((2, 1, 32, 32), UNLABELLED, dtype=torch.uint8)
    labels[0] = 0
    labels[0, :, 20:28, 20:28] = 1  # sample 0 is labelled: a target elsewhere, the warm square is not one
    targets = salient_targets(ir, labels)
    assert torch.equal(targets[0], labels[0].float())
    assert torch.equal(targets[1], salient_mask(ir)[1]) and targets[1].sum() > 0


def test_training_follows_the_labels_and_says_so(tmp_path):
    labelled = _write_set(tmp_path / "labelled", 3, labels=True)
    plain = _write_set(tmp_path / "plain", 3, labels=False)  # the same images, no labels
    kwargs = dict(epochs=1, batch_size=2, lr=1e-3, seed=3, crop=32, progress=False, log=lambda line: None)
    with_labels = load_file(train("refinefuse", labelled, tmp_path / "a", **kwargs))
    without = load_file(train("refinefuse", plain, tmp_path / "b", **kwargs))
    assert any(not torch.equal(v, without[k]) for k, v in with_labels.items())
    assert "segmentation labels (classes [1, 2, 3]) for 3 pairs" in (tmp_path / "a" / "refinefuse.json").read_text()


def test_prefetch_keeps_order_and_hands_on_errors():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("unreadable crop")

    items = prefetch(failing())
    assert next(items) == 1
    with pytest.raises(ValueError, match="unreadable crop"):
        next(items)


def test_cosine_schedule_decays_the_rate_and_a_resumed_run_keeps_it(tmp_path):
    pairs = _write_set(tmp_path / "set", 4, labels=False)
    kwargs = dict(batch_size=2, lr=1e-2, seed=3, crop=32, progress=False, log=lambda line: None)
    constant = load_file(train("dfh-base", pairs, tmp_path / "constant", epochs=2, **kwargs))
    cosine = load_file(train("dfh-base", pairs, tmp_path / "cosine", epochs=2, schedule="cosine", **kwargs))
    assert any(not torch.equal(v, constant[k]) for k, v in cosine.items())  # epoch 2 ran at about half the rate
    first = train("dfh-base", pairs, tmp_path / "resumed", epochs=1, schedule="cosine", **kwargs)
    resumed = load_file(train("dfh-base", pairs, tmp_path / "resumed", epochs=2, resume=first, **kwargs))
    assert all(torch.equal(v, resumed[k]) for k, v in cosine.items())
    assert '"schedule": "cosine"' in (tmp_path / "resumed" / "dfh-base.json").read_text()
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        train("dfh-base", pairs, tmp_path / "bad", epochs=1, schedule="step", **kwargs)
