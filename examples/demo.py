"""`make demo`: fuse and score pairs the project generates itself, with the real CLI.

    python examples/demo.py OUT_DIR

1. writes synthetic IR/VIS pairs to OUT_DIR/pairs/{ir,vis}/ (fuse_cli.synthetic);
2. runs `fuse fuse` once per available method (classical, and learned ones whose
   weights are shipped) into OUT_DIR/fused/<method>/;
3. runs `fuse score` on all of them side by side and prints the table of means
   (markdown: best bold, second underlined);
4. runs `fuse figure`: OUT_DIR/figure.png, one row per pair — IR, VIS, then each
   method — with the two regions where the methods differ most boxed and enlarged;
5. runs `fuse report`: OUT_DIR/report/index.html, to browse every pair at full size.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fuse_cli.synthetic import write_pairs
from stages.methods.registry import list_methods

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
        [*FUSE, "score", *pairs, *fused, "--metrics", METRICS, "--format", "markdown"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    print(table)
    (root / "scores.md").write_text(table)
    figure, report = root / "figure.png", root / "report"
    subprocess.run([*FUSE, "figure", *pairs, *fused, "--zoom", "auto", "--zoom", "auto", "--dpi", "200", "-o", str(figure), "-q"],
                   check=True)
    subprocess.run([*FUSE, "report", *pairs, *fused, "--metrics", METRICS, "-o", str(report), "-q"], check=True)
    print(f"mean scores: {root / 'scores.md'}\nfigure:      {figure}\nreport:      {report / 'index.html'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo"))
