"""Example command lines of every command: the "Examples" of its ``--help`` and the EXAMPLES of its man page.

Each command name (``"detect export"`` for a sub-command) maps to
``(what it does, command line)`` pairs. A test checks that every command has
examples and that they use only options the command has.
"""
from __future__ import annotations

EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "pairs": [
        ("one record per pair, matched by file stem", "fuse pairs tno/ir tno/vis > pairs.jsonl"),
        ("fuse and score the pairs in one pipe", "fuse pairs tno/ir tno/vis | fuse fuse -m laplacian -o fused/ | fuse score"),
    ],
    "fuse": [
        ("classical fusion of two folders", "fuse fuse -m laplacian --ir tno/ir --vis tno/vis -o fused/laplacian"),
        ("a network on the GPU, records from a file", "fuse fuse -m refinefuse --device cuda -b 16 -r pairs.jsonl -o fused/refinefuse > fused.jsonl"),
        ("16-bit TIFF output", "fuse fuse -m gff --ir tno/ir --vis tno/vis --out-format tif --bit-depth 16 -o fused/gff16"),
        ("every method, the extra it needs and its weights", "fuse fuse --list-methods"),
    ],
    "score": [
        ("every metric of one method, CSV", "fuse fuse -m gff -r pairs.jsonl -o fused/gff | fuse score > scores.csv"),
        ("two methods side by side", "fuse score --ir tno/ir --vis tno/vis --fused fused/gff --fused fused/refinefuse -f table"),
        ("the paper table of means", "fuse score -r fused.jsonl --metrics EN,SD,VIF,Qabf --format latex > table.tex"),
    ],
    "figure": [
        ("two pairs, two methods, zoomed insets",
         "fuse figure --ir tno/ir --vis tno/vis --fused fused/gff --fused fused/tesg --ids 01,07 --zoom auto -o fig.pdf"),
        ("from records", "cat fused_*.jsonl | fuse figure --zoom 120,80,64,64 -o fig.png --dpi 600"),
    ],
    "report": [
        ("an HTML page comparing two methods", "fuse report --ir msrs/ir --vis msrs/vis --fused fused/max --fused fused/tesg -o report/"),
        ("from records, chosen metrics", "cat fused_*.jsonl | fuse report -o report/ --metrics EN,SD,VIF,Qabf"),
    ],
    "caption": [
        ("the offline advisor's advice per pair", "fuse pairs msrs/ir msrs/vis | fuse caption -o captions/ > captioned.jsonl"),
        ("TeSG's caption without the target word", "fuse pairs msrs/ir msrs/vis | fuse caption --keyword person -o captions/"),
    ],
    "mask": [
        ("RefineFuse's salient-target masks", "fuse pairs msrs/ir msrs/vis | fuse mask -o masks/"),
        ("masks from detections", "fuse detect -r fused.jsonl -o det/ | fuse mask --backend boxes --classes person -o masks/"),
    ],
    "register": [
        ("align, then fuse the aligned pairs", "fuse pairs roadscene/ir roadscene/vis | fuse register -o reg/ | fuse fuse -m laplacian -o fused/"),
        ("classical ECC instead of the network", "fuse register -m ecc --ir roadscene/ir --vis roadscene/vis -o reg-ecc/"),
    ],
    "encode": [
        ("CLIP embeddings for MGFusion", "fuse pairs tno/ir tno/vis | fuse encode -o emb/ | fuse fuse -m mgfusion --weights runs/mgfusion.safetensors -o fused/"),
        ("a local checkpoint, IR and VIS", "fuse encode --pretrained clip/ViT-B-32.bin --image ir,vis -r pairs.jsonl -o emb/"),
    ],
    "train": [
        ("RefineFuse on two datasets",
         "cat <(fuse pairs roadscene/ir roadscene/vis) <(fuse pairs llvip/ir llvip/vis) | fuse train -m refinefuse -o runs/ --epochs 50"),
        ("continue a run", "fuse train -m refinefuse -r pairs.jsonl -o runs/ --resume runs/refinefuse.safetensors"),
        ("tard's detection head", "fuse pairs msrs/ir msrs/vis | fuse train -m tard --labels msrs/labels -o runs/tard"),
    ],
    "detect": [
        ("YOLO on fused images", "fuse detect -o det/ --model yolov8n.pt < fused.jsonl > detected.jsonl"),
        ("mAP against labels", "fuse detect -o det/ --labels msrs/labels --format markdown < fused.jsonl"),
        ("score existing boxes, no model", "fuse detect --detections other_detector/ --labels msrs/labels"),
    ],
    "detect export": [
        ("an ultralytics dataset from fused images", "fuse detect export -r fused.jsonl --labels msrs/labels -o dataset/ --split 0.8"),
    ],
    "detect train": [
        ("a detector from scratch", "fuse detect train --data dataset/data.yaml --model yolov8n.yaml --epochs 30 --imgsz 320"),
    ],
}

#: The main page's examples: whole pipelines.
PIPELINES: list[tuple[str, str]] = [
    ("fuse every pair of two folders, then score", "fuse pairs tno/ir tno/vis | fuse fuse -m laplacian -o fused/ | fuse score > scores.csv"),
    ("align unregistered pairs before fusing",
     "fuse pairs roadscene/ir roadscene/vis | fuse register -o reg/ | fuse fuse -m refinefuse -o fused/ | fuse score -f table"),
    ("the qualitative figure of two methods",
     "fuse figure --ir tno/ir --vis tno/vis --fused fused/gff --fused fused/refinefuse -o fig.pdf"),
]


def examples_text(command: str) -> str:
    """The ``--help`` epilog of ``command``: ``\\b`` keeps click from re-wrapping the command lines."""
    lines = ["Examples:", "", "\b"]
    for what, line in EXAMPLES[command]:
        lines += [f"  # {what}", f"  {line}"]
    return "\n".join(lines)


def add_examples(app) -> None:
    """Give every command of the Typer ``app`` (and of its command groups) its examples as the help epilog."""

    def name_of(info) -> str:
        return info.name or info.callback.__name__.replace("_", "-")

    for info in app.registered_commands:
        info.epilog = examples_text(name_of(info))
    for group in app.registered_groups:
        group.epilog = examples_text(group.name)
        for info in group.typer_instance.registered_commands:
            info.epilog = examples_text(f"{group.name} {name_of(info)}")
