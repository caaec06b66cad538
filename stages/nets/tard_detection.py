"""Detection head of the target-aware unregistered fusion network: YOLO on the fused features.

Hu et al., Front. Phys. 13:1599968 (2025), section 3.4 (dual-task reconstruction): the
fused feature ``F_f = [F_i^r, F^_i^r, F_v, F^_v]`` (eq. 7, :meth:`TardNet.features
<stages.nets.tard.TardNet.features>`) feeds both the reconstruction head and an object
detection head, YOLOv5 in the paper, trained with ``l_ob = c_yolov5(y, y_gt)`` (eq. 8),
YOLOv5's training loss; the total loss is ``l_c + l_s + 10 l_reg + 5 l_f + 5 l_ob``
(eq. 12 with section 4.1.1.2's weights). Joint training:
:func:`stages.training.tard.train_tard_detection`.

Chosen here:

* The head is ultralytics' ``yolov5n.yaml`` (YOLOv5u: YOLOv5's CSP backbone and PAN
  neck at the nano scale, depth 0.33, width 0.25; 2.5 M parameters, strides 8/16/32),
  whose first convolution takes the ``4C`` = 32 channels of ``F_f`` instead of RGB.
* Ultralytics no longer has YOLOv5's anchor-based head and loss: the head is the
  anchor-free decoupled ``Detect`` of YOLOv8, and ``l_ob`` is ultralytics'
  ``v8DetectionLoss`` (CIoU box ·7.5 + class BCE ·0.5 + DFL ·1.5, per image) in place of
  YOLOv5's box + objectness + class loss.
* The head sees ``F_f`` at the registration net's working size (160 x 256): a pair of
  any size is resized to it, and boxes are scaled back to the image's pixels (on the
  VIS grid, the fixed image of the registration).

Files: the head is a safetensors file with its config in the metadata (``yaml``,
``in_channels``, ``names``) and the name of the joint network's weights beside it
(``tard``, default ``tard.safetensors``): the head only fits the joint network it was
trained with.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from stages.nets.checkpoint import invalid, load_checked, read_header
from stages.nets.registration import FEATURES, resize
from stages.nets.tard import TardNet, load_tard

YAML = "yolov5n.yaml"
WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "tard_detector.safetensors"
FORMAT = "tard-detector"
KIND = "tard detection head"


class TardDetector(nn.Module):
    """An ultralytics YOLO detection model whose input is ``F_f`` ``(B, in_channels, h, w)`` instead of RGB.

    ``h, w`` multiples of 32. :meth:`forward` gives ultralytics' raw output (what its
    loss takes); :meth:`predict` gives boxes after non-maximum suppression.

    >>> head = TardDetector(["person", "car"]).eval()
    >>> [b.shape for b in head.predict(torch.rand(2, 32, 160, 256), conf=0.0, max_det=5)]
    [torch.Size([5, 6]), torch.Size([5, 6])]
    """

    def __init__(self, names: Sequence[str], in_channels: int = 4 * FEATURES, yaml: str = YAML):
        super().__init__()
        from stages.nets.yolo import quiet_ultralytics

        quiet_ultralytics()
        from ultralytics.nn.tasks import DetectionModel, yaml_model_load

        if not names:
            raise ValueError("a detection head needs at least one class name")
        cfg = yaml_model_load(yaml)
        cfg["nc"] = len(names)
        self.model = DetectionModel(cfg, ch=in_channels, verbose=False)
        self.model.names = dict(enumerate(names))
        self.names, self.in_channels, self.yaml = list(names), in_channels, yaml

    def forward(self, features: torch.Tensor):
        """``(B, in_channels, h, w)`` → ultralytics' output: a dict in training mode, ``(preds, dict)`` in eval mode."""
        return self.model(features)

    @torch.no_grad()
    def predict(self, features: torch.Tensor, conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
                classes: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Boxes per image, ``(N, 6)``: ``x1, y1, x2, y2`` in pixels of ``features``, score, class index.

        Ultralytics' ``non_max_suppression`` (per class, one label per box) with ``conf``,
        ``iou``, ``max_det`` and an optional list of class indices to keep.
        """
        from ultralytics.utils.nms import non_max_suppression

        return non_max_suppression(self.model(features), conf, iou, classes=classes, max_det=max_det, nc=len(self.names))


def save_detector(detector: TardDetector, path: str | Path, tard: str = "tard.safetensors") -> None:
    """Write ``detector``'s weights as safetensors, its config and the joint net's file name ``tard`` in the metadata."""
    state = {k: v.detach().cpu().contiguous() for k, v in detector.model.state_dict().items()}
    meta = {"format": FORMAT, "yaml": detector.yaml, "in_channels": str(detector.in_channels),
            "names": json.dumps(detector.names), "tard": tard}
    save_file(state, str(path), metadata=meta)


def read_config(path: str | Path) -> dict:
    """The metadata of a head file: ``{"yaml", "in_channels", "names", "tard"}``; ``ValueError`` for other files."""
    meta = read_header(path, KIND)[1]
    if meta.get("format") != FORMAT:
        raise invalid(path, KIND, "not written by fuse train -m tard --labels (stages.nets.tard_detection.save_detector)")
    try:
        return {"yaml": meta["yaml"], "in_channels": int(meta["in_channels"]), "names": json.loads(meta["names"]),
                "tard": meta.get("tard", "tard.safetensors")}
    except (KeyError, ValueError) as exc:
        raise invalid(path, KIND, f"unreadable metadata: {type(exc).__name__}: {exc}") from None


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> TardDetector:
    """A :class:`TardDetector` in eval mode from a file written by :func:`save_detector`."""
    config = read_config(path)
    detector = TardDetector(config["names"], config["in_channels"], config["yaml"])
    load_checked(path, KIND, lambda _: detector.model)  # names and shapes checked before the tensors are read
    return detector.to(device).eval()


class TardDetection(nn.Module):
    """The joint network and its detection head: a pair of any size → boxes in its pixels.

    >>> both = TardDetection(TardNet(), TardDetector(["person"])).eval()
    >>> both.detect(torch.rand(1, 1, 120, 200), torch.rand(1, 1, 120, 200), conf=0.0, max_det=3)[0].shape
    torch.Size([3, 6])
    """

    def __init__(self, net: TardNet, detector: TardDetector):
        super().__init__()
        self.net, self.detector = net, detector

    @torch.no_grad()
    def detect(self, ir: torch.Tensor, vis: torch.Tensor, **nms) -> list[torch.Tensor]:
        """``ir``, ``vis`` ``(B, 1, H, W)`` in [0, 1] → per image ``(N, 6)``: xyxy in ``(H, W)`` pixels, score, class.

        The pair is resized to the working size, the IR registered onto the VIS grid
        inside the network; ``nms`` goes to :meth:`TardDetector.predict`. Boxes are
        clipped to the image.
        """
        size = self.net.registration.size
        h, w = ir.shape[-2:]
        boxes = self.detector.predict(self.net.features(resize(ir, size), resize(vis, size)), **nms)
        scale, bound = ir.new_tensor([w / size[1], h / size[0]] * 2), ir.new_tensor([w, h] * 2)
        return [torch.cat([torch.minimum(b[:, :4] * scale, bound).clamp_min(0), b[:, 4:]], 1) for b in boxes]


def load_tard_detection(model: str | Path = "tard", device: str | torch.device = "cpu") -> TardDetection:
    """``"tard"`` (the packaged head) or a head file, with the joint network named in its metadata beside it."""
    path = WEIGHTS if str(model) == "tard" else Path(model)
    if str(model) == "tard" and not path.is_file():
        raise FileNotFoundError("no tard detection head is packaged: train one (fuse train -m tard --labels DIR) "
                                "and give --model RUN/tard_detector.safetensors")
    tard = path.parent / read_config(path)["tard"]
    return TardDetection(load_tard(tard, device), load_detector(path, device)).eval()
