"""`make demo`: fuse and score pairs the project generates itself, with the real CLI.

    python examples/demo.py OUT_DIR

1. writes synthetic IR/VIS pairs to OUT_DIR/pairs/{ir,vis}/ (fuse_cli.synthetic);
2. runs `fuse fuse` once per available method (classical, and learned ones whose
   weights are shipped) into OUT_DIR/fused/<method>/;
3. runs `fuse score` on all of them side by side and prints the table;
4. writes OUT_DIR/contact_sheet.png: one row per pair — IR, VIS, then each method.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from fuse_cli.images import read_image, to_uint8, write_image
from fuse_cli.synthetic import write_pairs
from stages.registry import list_methods

FUSE = [sys.executable, "-m", "fuse_cli"]
METRICS = "EN,SD,SF,AG,MI,SSIM,Qabf,VIF"


def available_methods() -> list[str]:
    """Classical methods, plus learned methods that have shipped weights on this install."""
    names = []
    for info in list_methods():
        try:
            info.factory(device="cpu")
        except FileNotFoundError:
            continue
        names.append(info.name)
    return names


def labelled_tile(img: np.ndarray, label: str) -> np.ndarray:
    """uint8 RGB tile with ``label`` written in its top-left corner (OpenCV's built-in font)."""
    rgb = to_uint8(img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2))
    rgb = np.ascontiguousarray(rgb)
    cv2.putText(rgb, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(rgb, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return rgb


def contact_sheet(root: Path, ids: list[str], methods: list[str]) -> np.ndarray:
    rows = []
    for pair_id in ids:
        tiles = [
            labelled_tile(read_image(root / "pairs" / "ir" / f"{pair_id}.png"), "IR"),
            labelled_tile(read_image(root / "pairs" / "vis" / f"{pair_id}.png"), "VIS"),
        ]
        tiles += [labelled_tile(read_image(root / "fused" / m / f"{pair_id}.png"), m) for m in methods]
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def main(root: Path) -> None:
    ids = write_pairs(root / "pairs", count=4)
    methods = available_methods()
    pairs = ["--ir", str(root / "pairs" / "ir"), "--vis", str(root / "pairs" / "vis")]
    for method in methods:
        print(f"fusing {len(ids)} pairs with {method}", file=sys.stderr)
        subprocess.run(
            [*FUSE, "fuse", *pairs, "-m", method, "-o", str(root / "fused" / method), "-q", "--overwrite"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    fused = [arg for m in methods for arg in ("--fused", str(root / "fused" / m))]
    table = subprocess.run(
        [*FUSE, "score", *pairs, *fused, "--metrics", METRICS, "--format", "table"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    mean_rows = [line for line in table.splitlines()[1:] if line.startswith("mean")]
    print(table.splitlines()[0])
    print("\n".join(mean_rows))
    (root / "scores.txt").write_text(table)
    sheet_path = root / "contact_sheet.png"
    write_image(sheet_path, contact_sheet(root, ids, methods) / 255.0)
    print(f"\nper-image scores: {root / 'scores.txt'}\ncontact sheet:    {sheet_path}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo"))
