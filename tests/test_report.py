"""Paper-ready output: marked score tables, the comparison figure, the HTML report (issue 18)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import imageio.v3 as iio
import numpy as np
import pytest

from typer.testing import CliRunner

from conftest import fuse_cli
from fuse_cli.app import app
from stages.core.images import luminance, read_image, write_image
from stages.report.figure import FigureRow, Zoom, auto_boxes, disagreement, draw_figure, label_size, plan_zooms
from stages.report.pairs import group_by_pair
from stages.report.table import MeanTable, latex_table, markdown_table, rank_marks, record_dataset

METHODS = ("mean", "max", "weighted")


@pytest.fixture(scope="module")
def compared(synthetic_pairs, tmp_path_factory):
    """The synthetic pairs "fused" three ways (written here, no fusion stage needed): (pairs folder, {method: folder})."""
    out = tmp_path_factory.mktemp("fused")
    for image in sorted((synthetic_pairs / "ir").glob("*.png")):
        ir, vis = read_image(image), read_image(synthetic_pairs / "vis" / image.name)
        luma = luminance(vis)
        for method, fused in zip(METHODS, (0.5 * (ir + luma), np.maximum(ir, luma), 0.3 * ir + 0.7 * luma)):
            write_image(out / method / image.name, fused)
    return synthetic_pairs, {m: out / m for m in METHODS}


def cli(*args, input: str | None = None):
    """Run ``fuse ARGS`` in this process (quicker than a subprocess); ``.exit_code``, ``.stdout``, ``.stderr``."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def compare_args(compared) -> list:
    pairs, fused = compared
    return ["--ir", pairs / "ir", "--vis", pairs / "vis", *(a for m in METHODS for a in ("--fused", fused[m]))]


# --- tables ------------------------------------------------------------------------------------------


def test_marks_best_and_second_in_each_direction_with_ties():
    assert rank_marks([0.5, 0.7, 0.6], higher_is_better=True, precision=3) == ["", "best", "second"]
    assert rank_marks([0.5, 0.7, 0.6], higher_is_better=False, precision=3) == ["best", "", "second"]
    # Equal as printed: both best; the next distinct value is second, whatever the count of ties.
    assert rank_marks([0.7001, 0.6999, 0.5, 0.4], higher_is_better=True, precision=3) == ["best", "best", "second", ""]
    assert rank_marks([0.3, 0.5, 0.5, 0.9], higher_is_better=True, precision=2) == ["", "second", "second", "best"]
    assert rank_marks([float("nan"), 2.0, 1.0], higher_is_better=True, precision=2) == ["", "best", "second"]
    assert rank_marks([1.0, 1.0], higher_is_better=True, precision=2) == ["best", "best"]


def scored(method: str, dataset: str, values: dict, n: int = 2) -> list[dict]:
    return [{"id": f"{dataset}{i}", "method": method, "ir": f"/data/{dataset}/ir/{i}.png", "scores": values} for i in range(n)]


def test_latex_table_marks_cells_arrows_and_dataset_groups():
    records = (scored("a_net", "tno", {"EN": 7.0, "Qcv": 300.0}) + scored("b", "tno", {"EN": 6.0, "Qcv": 200.0})
               + scored("c", "tno", {"EN": 6.5, "Qcv": 250.0}) + scored("a_net", "msrs", {"EN": 5.0, "Qcv": 100.0}, n=3)
               + scored("b", "msrs", {"EN": 5.5, "Qcv": 100.0}, n=3))
    table = MeanTable.from_records(records, ["EN", "Qcv"], group_by="dataset")
    text = latex_table(table, "mmif", precision=2)
    assert r"\toprule" in text and r"\midrule" in text and r"\bottomrule" in text and "mmif" in text
    assert r"\multicolumn{2}{c}{tno (2)} & \multicolumn{2}{c}{msrs (3)}" in text
    assert r"\cmidrule(lr){2-3} \cmidrule(lr){4-5}" in text
    assert r"EN $\uparrow$ & $Q_{CV}$ $\downarrow$ & EN $\uparrow$" in text
    rows = {line.split(" & ")[0]: line.split(" & ")[1:] for line in text.splitlines() if line.endswith(r"\\") and " & " in line}
    # Qcv: lower is better; msrs Qcv is a tie (both bold); c has no msrs score.
    assert rows[r"a\_net"] == [r"\textbf{7.00}", "300.00", r"\underline{5.00}", r"\textbf{100.00} \\"]
    assert rows["b"] == ["6.00", r"\textbf{200.00}", r"\textbf{5.50}", r"\textbf{100.00} \\"]
    assert rows["c"] == [r"\underline{6.50}", r"\underline{250.00}", "--", r"-- \\"]
    assert text.count(r"\begin{table}") == 1
    assert latex_table(table, "vifb", 2, layout="tables").count(r"\begin{tabular}{lrr}") == 2


def test_markdown_table_and_dataset_rule():
    records = scored("x", "tno", {"SSIM": 0.9}) + scored("y", "tno", {"SSIM": 0.8}) + scored("z", "tno", {"SSIM": 0.7})
    lines = markdown_table(MeanTable.from_records(records, ["SSIM"]), "mmif", precision=1).splitlines()
    assert lines[:5] == ["| method | SSIM ↑ |", "|---|---:|", "| x | **0.9** |", "| y | <u>0.8</u> |", "| z | 0.7 |"]
    assert "over 2 pairs" in lines[-1] and "mmif" in lines[-1]
    assert record_dataset({"ir": "/d/msrs/ir/1.png"}) == "msrs"
    assert record_dataset({"ir": "/d/msrs/ir/1.png", "dataset": "MSRS-test"}) == "MSRS-test"


def test_score_latex_compiles_and_group_by_needs_a_table_format(compared, tmp_path):
    done = cli("score", *compare_args(compared), "--metrics", "EN,Qabf,Nabf", "--format", "latex", "--precision", "4")
    assert done.exit_code == 0, done.stderr
    body = [line for line in done.stdout.splitlines() if line.endswith(r"\\")][1:]
    assert [line.split(" & ")[0] for line in body] == list(METHODS)
    assert all(len(line.split(" & ")) == 4 for line in body)
    assert sum(line.count(r"\textbf") for line in body) >= 3 and re.search(r"\d\.\d{4}", body[0])
    bad = cli("score", *compare_args(compared), "--metrics", "EN", "--group-by", "dataset")
    assert bad.exit_code == 2 and "--group-by needs --format markdown or latex" in bad.stderr
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed: the LaTeX structure was checked, not compiled")
    (tmp_path / "t.tex").write_text(done.stdout)
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\\input{t.tex}\\end{document}\n")
    compiled = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert compiled.returncode == 0, compiled.stdout[-2000:]


def test_score_markdown_groups_datasets_from_records(compared):
    pairs, fused = compared
    records = []
    for dataset in ("day", "night"):
        for method in ("mean", "max"):
            for image in sorted((pairs / "ir").glob("*.png"))[:2]:
                records.append({"id": image.stem, "ir": str(image), "vis": str(pairs / "vis" / image.name),
                                "fused": str(fused[method] / image.name), "method": method, "dataset": dataset})
    done = cli("score", "--metrics", "EN", "--format", "markdown", "--group-by", "dataset",
                    input="".join(json.dumps(r) + "\n" for r in records))
    assert done.exit_code == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "| method | day (2) EN ↑ | night (2) EN ↑ |"
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| mean", "| max"]


# --- figure ------------------------------------------------------------------------------------------


def constructed_row(h: int = 120, w: int = 160) -> FigureRow:
    """Three methods that agree except in a textured 20x20 square at (110, 20); a warm target bottom-right."""
    rng = np.random.default_rng(0)
    ir = np.full((h, w), 0.2, np.float32)
    ir[90:115, 125:150] = 0.95
    vis = np.full((h, w, 3), 0.5, np.float32)
    base = np.full((h, w), 0.4, np.float32)
    other = base.copy()
    other[20:40, 110:130] += rng.uniform(-0.3, 0.3, (20, 20)).astype(np.float32)
    return FigureRow("p", [ir, vis, base, base.copy(), other])


def test_zoom_auto_finds_the_region_where_methods_differ_most():
    row = constructed_row()
    score = disagreement(row.images, methods=3)
    (x, y, w, h), = auto_boxes(score, 1, 20)
    assert abs(x - 110) <= 2 and abs(y - 20) <= 2 and (w, h) == (20, 20)
    first, second = plan_zooms(row, explicit=[(10, 10, 30, 30)], auto=1, size=20)
    assert first.box == (10, 10, 30, 30) and abs(second.box[0] - 110) <= 2
    with pytest.raises(ValueError, match="leaves the 160x120 image"):
        plan_zooms(row, explicit=[(150, 0, 20, 20)])


def test_figure_grid_size_and_inset_positions(tmp_path):
    row = constructed_row()
    zooms = plan_zooms(row, explicit=[], auto=1, size=20)
    # The warm target is bottom-right and the box top-right: the inset takes a left corner.
    assert zooms[0].corner in ("bottom-left", "top-left")
    rows, plans = [row, row], [zooms, [Zoom((0, 0, 20, 20), "bottom-right"), Zoom((60, 60, 20, 20), "top-left")]]
    labels = ["IR", "VIS", "a", "b", "c"]
    layout = draw_figure(rows, labels, plans, tmp_path / "f.png", dpi=200, width=5.0)
    png = iio.imread(tmp_path / "f.png")[..., :3]
    height, width = png.shape[:2]
    assert (height, width) == (int(layout.size_inches[1] * 200), 1000)
    assert len(layout.tiles) == 2 and all(len(r) == 5 for r in layout.tiles)
    assert [len(c) for r in layout.insets for c in r] == [1] * 5 + [2] * 5
    # Each inset sits in its tile's corner and its border has the region's colour (red first, blue second).
    (left, bottom, tw, th), (br, tl) = layout.tiles[1][2], layout.insets[1][2]
    assert br[0] + br[2] == pytest.approx(left + tw) and br[1] == pytest.approx(bottom)
    assert tl[0] == pytest.approx(left) and tl[1] + tl[3] == pytest.approx(bottom + th)
    for rect, rgb in ((br, (0xE4, 0x1A, 0x1C)), (tl, (0x37, 0x7E, 0xB8))):
        x0, x1 = int(rect[0] * width) + 3, int((rect[0] + rect[2]) * width) - 3
        y0, y1 = round(height - (rect[1] + rect[3]) * height), round(height - rect[1] * height)
        for edge in (png[y0 - 1:y0 + 2, x0:x1], png[y1 - 2:y1 + 1, x0:x1]):  # top and bottom border lines
            distance = np.abs(edge.astype(int) - rgb).max(axis=2).min(axis=0)
            assert np.median(distance) < 30, (rect, edge[:, :2])
    # Labels share one size, shrunk so the widest fits its column.
    assert 4 <= label_size(["IR", "a-long-method-name"], 0.4, 7) < 7 == label_size(["IR", "a"], 0.4, 7)
    draw_figure(rows, labels, plans, tmp_path / "f.svg")
    svg = (tmp_path / "f.svg").read_text()
    assert "<text" in svg and ">VIS<" in svg  # labels stay text in vector output


def test_figure_command(compared, tmp_path):
    done = fuse_cli("figure", *compare_args(compared), "--ids", "scene_01,scene_03", "--zoom", "auto", "--zoom", "30,40,50,50",
                    "-o", tmp_path / "fig.pdf", "--dpi", "150")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fig.pdf").read_bytes()[:5] == b"%PDF-"
    assert done.stderr.splitlines()[0].startswith("scene_01: 30,40,50,50 (")
    assert done.stdout == ""
    missing = cli("figure", *compare_args(compared), "--ids", "scene_09", "-o", tmp_path / "x.png")
    assert missing.exit_code == 2 and "scene_09" in missing.stderr
    bad = cli("figure", *compare_args(compared), "--zoom", "1,2,3", "-o", tmp_path / "x.png")
    assert bad.exit_code == 2 and "x,y,w,h" in bad.stderr
    outside = cli("figure", *compare_args(compared), "--zoom", "300,200,50,50", "-o", tmp_path / "x.png")
    assert outside.exit_code == 1 and len(outside.stderr.splitlines()) == 1 and "leaves the 320x240 image" in outside.stderr


def test_figure_from_fuse_records_of_several_methods(compared, tmp_path):
    pairs, fused = compared
    records = [{"id": f"scene_0{i}", "ir": str(pairs / "ir" / f"scene_0{i}.png"), "vis": str(pairs / "vis" / f"scene_0{i}.png"),
                "fused": str(fused[m] / f"scene_0{i}.png"), "method": m} for m in ("max", "mean") for i in range(3)]
    records.append({**records[0], "method": "broken", "error": "earlier stage failed"})
    pairs_out, methods = group_by_pair(records)
    assert [p.pair_id for p in pairs_out] == ["scene_00", "scene_01", "scene_02"] and methods == ["max", "mean"]
    assert pairs_out[1].fused == {"max": records[1]["fused"], "mean": records[4]["fused"]}
    stdin = "".join(json.dumps(r) + "\n" for r in records)
    done = cli("figure", "--ids", "scene_02", "-o", tmp_path / "f.svg", "-q", input=stdin)
    assert done.exit_code == 0, done.stderr
    assert ">max<" in (tmp_path / "f.svg").read_text()
    lacking = cli("figure", "-o", tmp_path / "g.png", input="".join(json.dumps(r) + "\n" for r in records[:4]))
    assert lacking.exit_code == 1 and "pair scene_01: no fused image of mean" in lacking.stderr


# --- report ------------------------------------------------------------------------------------------


class Images(HTMLParser):
    """The attributes of every ``<img>`` of a page."""

    def __init__(self, page: str):
        super().__init__()
        self.images: list[dict] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


@pytest.fixture(scope="module")
def report(compared, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report"
    done = cli("report", *compare_args(compared), "-o", out, "--metrics", "EN,SD,Qabf")
    assert done.exit_code == 0, done.stderr
    return out


def test_report_references_every_image_without_inlining(compared, report):
    pairs, fused = compared
    page = (report / "index.html").read_text()
    resolved = {(report / unquote(img["src"])).resolve() for img in Images(page).images}
    expected = {p.resolve() for folder in (pairs / "ir", pairs / "vis", *fused.values()) for p in folder.glob("*.png")}
    assert expected | {(report / "scores.png").resolve()} == resolved
    assert "data:" not in page and len(page) < 60_000
    assert '<th data-col="3" data-higher="1" data-key="Qabf">Qabf ↑</th>' in page


def test_report_converts_what_a_browser_cannot_show(synthetic_pairs, tmp_path):
    fused = tmp_path / "tif16"
    for image in sorted((synthetic_pairs / "ir").glob("*.png")):
        write_image(fused / f"{image.stem}.tif", read_image(image), bit_depth=16)
    done = cli("report", "--ir", synthetic_pairs / "ir", "--vis", synthetic_pairs / "vis", "--fused", fused,
               "-o", tmp_path / "r", "--metrics", "EN")
    assert done.exit_code == 0, done.stderr
    converted = sorted(p.name for p in (tmp_path / "r" / "images" / "tif16").iterdir())
    assert converted == [f"scene_{i:02d}.png" for i in range(4)]
    assert 'src="images/tif16/scene_00.png"' in (tmp_path / "r" / "index.html").read_text()


def test_report_names_a_missing_image_once_and_still_writes_the_page(compared, tmp_path):
    pairs, fused = compared
    records = [{"id": p.stem, "ir": str(p), "vis": str(pairs / "vis" / p.name), "fused": str(fused["max"] / p.name),
                "method": "max"} for p in sorted((pairs / "ir").glob("*.png"))]
    records[1]["fused"] = str(tmp_path / "gone.png")
    done = cli("report", "-o", tmp_path / "r", "--metrics", "EN", input="".join(json.dumps(r) + "\n" for r in records))
    assert done.exit_code == 1 and done.stderr.count("gone.png") == 1, done.stderr
    page = (tmp_path / "r" / "index.html").read_text()
    assert "gone.png" not in page and page.count('class="layer base"') == 4 and page.count('data-name="max"') == 3


CHROMIUM = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def chromium(url: str, tmp_path: Path, *action: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
             "--window-size=1200,4000", "--virtual-time-budget=5000"]
    return subprocess.run([CHROMIUM, *flags, *action, url], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium); .ci/run installs it")
def test_report_renders_sorts_switches_and_slides_in_chromium(report, tmp_path):
    url = (report / "index.html").as_uri()
    dom = chromium(url + "#sort=SD&show=max", tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-ready="1"' in html and not re.search(r'class="[^"]*broken', html)
    layers = [img for img in Images(html).images if "layer" in img.get("class", "")]
    assert len(layers) == 4 * 5
    shown = [img for img in layers if "display: block" in img.get("style", "")]
    assert [img["data-name"] for img in shown] == ["max"] * 4
    assert all(img.get("data-loaded") == "320x240" for img in shown)
    table = html.split("<tbody>")[1].split("</tbody>")[0]
    sd = [float(re.findall(r'data-value="([^"]+)"', cells)[1]) for cells in re.findall(r"<tr><th>\w+</th>(.*?)</tr>", table)]
    assert sd == sorted(sd, reverse=True) and len(sd) == 3
    slid = chromium(url + "#compare=IR,weighted&split=30", tmp_path, "--dump-dom").stdout
    assert slid.count('data-view="compare:0,4@30"') == 4 and "inset(0px 0px 0px 30%)" in slid
    shot = chromium(url, tmp_path, f"--screenshot={tmp_path / 'shot.png'}")
    assert shot.returncode == 0, shot.stderr[-2000:]
    pixels = iio.imread(tmp_path / "shot.png")
    assert pixels.shape[:2] == (4000, 1200) and pixels[..., :3].std() > 20
