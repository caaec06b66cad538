"""``fuse caption``: describe each pair in words (``OUT/<id>.txt``, record key ``caption``).

    fuse pairs ir/ vis/ | fuse caption -o captions/ --keyword person | fuse mask --backend text --keyword person -o masks/
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_cli import options as opt
from fuse_cli.inputs import build_stage, gather_records, usage_error
from fuse_cli.runner import Reporter, run_stage
from stages.extras import require_extra


#: stages.caption.BACKENDS, named here so --help imports no backend.
BACKENDS = ("advisor", "blip", "coca")
Backend = opt.choice(BACKENDS, "--backend", what="caption backend", help="advisor (offline, no weights), blip or coca.")
CaptionedImage = opt.choice(("vis", "fused", "ir"), "--image", what="image",
                            help="Image the model describes: vis, fused (needs a 'fused' key) or ir.")


@opt.stage_options(batch_size=4)
def caption(
    backend: Backend = "advisor",
    out: opt.OutDir = Path("captions"),
    ir: opt.InputIR = None,
    vis: opt.InputVIS = None,
    records: opt.RecordsFile = None,
    image: CaptionedImage = "vis",
    ask: Annotated[Optional[str], typer.Option("--ask", help="A question for backends that answer prompts (blip; advisor reads the task and target from it), e.g. the MLLM-guided paper's \"To improve the accuracy of pedestrian detection, how can the quality of this image be enhanced?\"", show_default=False)] = None,
    keyword: Annotated[Optional[str], typer.Option("--keyword", help="TeSG's target word: adds caption_without_keyword (the caption with the word removed).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="blip: local model folder or hub name; coca: open_clip architecture.", show_default=False)] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="coca: open_clip pretrained tag or checkpoint path; blip: same as --model.", show_default=False)] = None,
    *,
    run: opt.RunOptions,
    device: str,
) -> None:
    """Caption or advise on each pair; writes OUT/<id>.txt and adds "caption" to the record.

    The advisor measures brightness, contrast, exposure, haze, noise, blur and
    the warm IR targets the visible image hides, and writes short advice
    ("the visible image is dark (mean 0.13); raise brightness; two warm targets
    are invisible in VIS (middle right, centre); keep their IR intensity").
    """
    from stages.caption import CaptionStage

    if backend == "coca" and ask:
        raise usage_error("--ask: coca captions but does not answer prompts; use --backend blip or advisor")
    require_extra({"blip": "text", "coca": "clip"}.get(backend), f"fuse caption --backend {backend}")
    reporter = Reporter("caption", run.quiet, run.verbose)
    source = gather_records(ir, vis, records, reporter)
    make_stage = functools.partial(CaptionStage, out, backend, image=image, ask=ask, keyword=keyword, model=model,
                                   pretrained=pretrained, device=device if backend != "advisor" else "cpu")
    stage = build_stage("caption", make_stage)
    raise typer.Exit(run_stage(stage, source, run, reporter, make_stage=make_stage))


def add_commands(app: typer.Typer) -> None:
    app.command()(caption)
