"""One contract per learned method: :data:`LEARNED` maps a name to its :class:`LearnedMethod`.

A spec says, in one place, what every layer needs to know about a learned method: the
network class, the guidance it fuses with, its loss, the paper's training recipe, the
weights file, the trainer and the ``fuse train`` options it accepts. Classes and functions
are named ``"module:name"`` and imported only when asked for, so listing the specs (as
``fuse train --help`` does) imports no network; the trainers live in :mod:`stages.training`,
above this layer, and are only named here (``fuse train`` calls them).

Every trainer is called with keywords, ``trainer(pairs=..., out=..., **trainer_args, **options)``: ``pairs``
are ``(ir_path, vis_path)`` tuples (records ``{"id", "ir", "vis"}`` with ``pairs_as_records``),
``options`` the keyword arguments of the ``fuse train`` options given; options not given
take the recipe's values.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

#: What ``fuse train`` accepts for every method: the data, ``--out``, ``--epochs``, ``--batch-size``,
#: ``--lr``, ``--seed``, ``--device``, ``--quiet``. Everything else is per method (:attr:`LearnedMethod.options`).
CROP_TRAINED = ("--crop", "--resume", "--init", "--schedule")
DETECTION = ("--det-model", "--labels", "--label-classes", "--class-map", "--det-weight", "--det-scale",
             "--val-ir/--val-vis")
TEXT = ("--fixed-text", "--cache", "--text-encoder")


def resolve(target: str) -> Any:
    """The object named ``"module:name"``, imported now (looked up on every call, so tests may patch it)."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class LearnedMethod:
    """What every layer needs to know about one learned method (see the module docstring)."""

    name: str
    network: str  # "module:Class" of the torch network
    guidance: str  # what it fuses with besides ir and vis: "none", "mask+text", "text" or "clip"
    loss: str | None  # "module:function" ``loss(fused, ir, vis, ...) -> scalar``; None: the trainer composes its own
    recipe: dict  # the paper's training hyper-parameters: epochs, batch_size, lr, crop, optimizer, schedule, ...
    trainer: str  # "module:function", called as the module docstring says
    options: tuple[str, ...]  # the ``fuse train`` options it accepts besides the common ones
    requires: dict = field(default_factory=dict)  # options it cannot train without → the error's end, after "-m NAME "
    trainer_args: dict = field(default_factory=dict)  # fixed keyword arguments of the trainer
    pairs_as_records: bool = False  # the trainer takes records {"id", "ir", "vis"} instead of (ir, vis) tuples
    salient_targets: bool = False  # the loss takes ``salient=`` (B, 1, H, W) target masks
    train_extra: str | None = None  # the fuse-cli extra training needs (stages.extras)

    @property
    def weights(self) -> str:
        """The checkpoint's file name, shipped in ``stages/weights/`` and written by ``fuse train``."""
        return f"{self.name}.safetensors"

    @property
    def model(self) -> type:
        """The network class (imports its module)."""
        return resolve(self.network)

    @property
    def loss_fn(self) -> Callable:
        """The loss function (imports its module)."""
        if self.loss is None:
            raise ValueError(f"{self.name} has no single loss function: its trainer composes its losses")
        return resolve(self.loss)

    @property
    def train(self) -> Callable:
        """The trainer (imports :mod:`stages.training`'s module)."""
        return resolve(self.trainer)


def learned_method(name: str) -> LearnedMethod:
    """The spec of ``name``; ``KeyError`` naming the learned methods otherwise."""
    try:
        return LEARNED[name]
    except KeyError:
        raise KeyError(f"unknown learned method {name!r}; choose one of: {', '.join(LEARNED)}") from None


_LOOP = "stages.training.loop:train"
_TEXT = "stages.training.text:train_text_fusion"

LEARNED: dict[str, LearnedMethod] = {spec.name: spec for spec in (
    # Text-DFH, Sect. 4.2: Adam, lr 1e-3, batch 16, 100 epochs (first stage), random
    # flipping, rotation and cropping; no schedule is given, so the rate is constant.
    # The crop size is not given: 256 as RefineFuse.
    LearnedMethod(
        "dfh-base", "stages.nets.dfh_base:DFHBase", "none", "stages.nets.dfh_base:dfh_loss",
        {"epochs": 100, "batch_size": 16, "lr": 1e-3, "crop": 256,
         "optimizer": "adam", "momentum": 0.0, "schedule": "constant"},
        _LOOP, (*CROP_TRAINED, "--optimizer", "--low-light", *DETECTION), trainer_args={"method": "dfh-base"}),
    # MGFusion, Sect. 4.1-4.2: Adam, batch 16, 100 epochs, 256 crops; the rate rises linearly
    # from lr/10 to lr over the first 20 % of the epochs, then falls back to lr/10
    # (stages.training.mgfusion.lr_at). The CLIP is frozen.
    LearnedMethod(
        "mgfusion", "stages.nets.mgfusion:MGFusion", "clip", "stages.nets.mgfusion:mgfusion_loss",
        {"epochs": 100, "batch_size": 16, "lr": 1e-3, "crop": 256, "optimizer": "adam", "schedule": "warmup-linear",
         "clip_model": "ViT-B-32", "pretrained": "openai"},
        "stages.training.mgfusion:train_mgfusion", ("--crop", "--resume", "--clip-model", "--pretrained"),
        train_extra="clip"),
    # RefineFuse, "Implement details": SGD, initial lr 1e-3, batch 8, 256×256 crops,
    # 300 epochs, random rotation and flipping. Momentum and the decay of the
    # "initial" rate are not given: momentum 0.9 and cosine decay to 1 % are ours.
    # The shipped weights used optimizer="adam" instead (their card says so): in a
    # CPU budget of ~1.3 K steps, SGD at 1e-3 left the loss where it started.
    LearnedMethod(
        "refinefuse", "stages.nets.refinefuse:RefineFuse", "none", "stages.nets.refinefuse:refinefuse_loss",
        {"epochs": 300, "batch_size": 8, "lr": 1e-3, "crop": 256,
         "optimizer": "sgd", "momentum": 0.9, "schedule": "cosine"},
        _LOOP, (*CROP_TRAINED, "--optimizer", "--low-light", *DETECTION), trainer_args={"method": "refinefuse"},
        salient_targets=True),
    # Target-aware fusion: the joint network fine-tuned with a new detection head (l_ob weighted
    # by lambda_3 = 5, eq. 12); the network learns at a tenth of the head's rate; the working
    # size comes from --init. Its losses are composed by the trainer (stages.training.tard).
    LearnedMethod(
        "tard", "stages.nets.tard:TardNet", "none", None,
        {"epochs": 30, "batch_size": 4, "lr": 1e-3, "optimizer": "adam", "schedule": "cosine"},
        "stages.training.tard:train_tard_detection",
        ("--init", "--labels", "--label-classes", "--class-map", "--det-weight"),
        {"--labels": "trains the network's detection head: give --labels DIR (ground truth by IR file stem)"},
        pairs_as_records=True, train_extra="detect"),
    # TeSG, Sect. 4.1: AdamW, lr 1e-4, batch 8, 96×96 crops, 140 epochs.
    LearnedMethod(
        "tesg", "stages.nets.tesg:TeSG", "mask+text", "stages.nets.tesg:tesg_loss",
        {"epochs": 140, "batch_size": 8, "lr": 1e-4, "crop": 96, "optimizer": "adamw", "schedule": "constant"},
        _TEXT, (*CROP_TRAINED, *TEXT, "--no-mask-guidance", *DETECTION), trainer_args={"method": "tesg"}, train_extra="text"),
    # Text-DFH, Sect. 4.2: Adam, lr 1e-3, batch 16, 200 epochs (second stage); the crop size
    # is not given (128 here); the dfh-base network is frozen (--base-weights, default the shipped one).
    LearnedMethod(
        "textdfh", "stages.nets.textdfh:TextDFH", "text", "stages.nets.dfh_base:dfh_loss",
        {"epochs": 200, "batch_size": 16, "lr": 1e-3, "crop": 128, "optimizer": "adam", "schedule": "constant"},
        _TEXT, (*CROP_TRAINED, *TEXT, "--base-weights", *DETECTION), trainer_args={"method": "textdfh"}, train_extra="text"),
    # The registration network (Hu et al. 2025, Sect. 4.1), then the tard fusion head
    # (stages.training.registration): phase 1's 50 epochs, cosine decay to 2 % of lr.
    LearnedMethod(
        "register", "stages.nets.registration:RegistrationNet", "none", None,
        {"epochs": 50, "batch_size": 8, "lr": 1e-3, "crop": 256, "optimizer": "adam", "schedule": "cosine"},
        "stages.training.registration:train_register", ("--crop", "--resume", "--init", "--fusion-epochs"),
        pairs_as_records=True),
)}
