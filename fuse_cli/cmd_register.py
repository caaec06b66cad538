"""``fuse register``: resample unaligned IR onto the VIS grid, so ``fuse register | fuse fuse`` fuses aligned pairs."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_cli import options as opt
from fuse_cli.inputs import build_stage, gather_records
from fuse_cli.runner import Reporter, run_stage


#: stages.register.METHODS and ECC_MODELS, named here so --help imports neither torch nor OpenCV.
METHODS = ("ecc", "net", "net-ecc")
ECC_MODELS = ("affine", "homography")
Method = opt.choice(METHODS, "--method", "-m", what="registration method", help=(
    "ecc (classical, no weights), net (the paper's network) or net-ecc (ECC started from the network)."))
EccModel = opt.choice(ECC_MODELS, "--ecc-model", what="ECC motion model", help="ECC motion model: affine or homography.")


@opt.stage_options(batch_size=1)
def register_command(
    method: Method = "ecc",
    out: opt.OutDir = Path("registered"),
    ir: opt.InputIR = None,
    vis: opt.InputVIS = None,
    records: opt.RecordsFile = None,
    weights: opt.Weights = None,
    ecc_model: EccModel = "affine",
    max_displacement: Annotated[Optional[float], typer.Option("--max-displacement", help="Fail a pair whose estimated field moves a pixel farther than this (VIS pixels).", show_default=False)] = None,
    mask_invalid: Annotated[bool, typer.Option("--mask-invalid", help="Write OUT/<id>.valid.png and zero pixels that fall outside the IR image instead of repeating its border.")] = False,
    save_overlay: Annotated[bool, typer.Option("--save-overlay", help="Write OUT/<id>.overlay.png: registered IR in red over VIS in cyan.")] = False,
    single_pass: Annotated[bool, typer.Option("--single-pass", help="net, net-ecc: one pass of the network at its working size instead of the average of 6 (3 sizes x mirrored); faster, less accurate.")] = False,
    min_confidence: Annotated[float, typer.Option("--min-confidence", min=0.0, max=1.0, help="Fail a pair whose registration confidence (the correlation of the registered IR's and the VIS image's edge strengths, in the record as registration.confidence; an IR of pure noise scores 0.04 at most, most real pairs 0.1 to 0.7) is below this. 0 keeps every result.")] = 0.06,
    *,
    run: opt.RunOptions,
    device: str,
) -> None:
    """Register each IR image onto its VIS image; print each record with "ir" pointing at the registered image.

    Writes OUT/<id>.png (the registered IR, VIS size) and OUT/<id>.grid.npy: float32
    (H, W, 2), for each VIS pixel the (x, y) to sample in the original IR, normalised
    to [-1, 1] with align_corners=False (registered = grid_sample(ir, grid)). The record
    keeps the original as "ir_unregistered" and gains "grid" and "registration":
    {"path": what made the grid (ecc, translation, identity, net, net+ecc, net-affine),
    "confidence": see --min-confidence}.
    """
    from stages.register import RegisterStage

    reporter = Reporter("register", run.quiet, run.verbose)
    source = gather_records(ir, vis, records, reporter)
    make_stage = functools.partial(RegisterStage, out, method, device, max_displacement, mask_invalid, save_overlay,
                                   weights, ecc_model, single_pass, min_confidence)
    stage = build_stage("register", make_stage)
    raise typer.Exit(run_stage(stage, source, run, reporter, make_stage=make_stage))


def add_commands(app: typer.Typer) -> None:
    app.command("register")(register_command)
