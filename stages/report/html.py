"""One static HTML page to browse a comparison: sortable score table, plots, a gallery per pair.

The page opens from disk (no server) and references the images where they are
(relative paths), so a report of hundreds of pairs stays small. Only images a
browser cannot show as they are — TIFF, and 16-bit PNG (often radiometric IR
that would look black) — get an 8-bit PNG rendering under ``images/``.

The gallery shows one image at a time at full resolution (buttons or keys 1–9
switch; a checkbox fits it to the window) and slides between any two: the second
is drawn over the first right of a split you drag. The URL remembers the view,
so a link reproduces it: ``index.html#sort=Qabf&show=gff&compare=max,gff&split=40``.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from stages.report.pairs import PairOutputs
from stages.report.table import MeanTable, caption, higher_is_better, rank_marks

BROWSER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def browser_url(path: str, out_dir: Path, name: str) -> str:
    """The URL, relative to ``out_dir``, under which a browser shows ``path``.

    Files a browser shows as they are get their relative path; others are
    rendered once to ``out_dir/images/<name>.png`` (as every stage reads them).
    """
    source = Path(path)
    if source.suffix.lower() in BROWSER_SUFFIXES and not _is_16_bit_png(source):
        return quote(Path(os.path.relpath(source.resolve(), out_dir.resolve())).as_posix())
    from stages.core.images import read_image, write_image

    target = out_dir / "images" / f"{name}.png"
    if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
        write_image(target, read_image(source))
    return quote(target.relative_to(out_dir).as_posix())


def _is_16_bit_png(path: Path) -> bool:
    if path.suffix.lower() != ".png":
        return False
    from PIL import Image

    with Image.open(path) as img:
        return img.mode.startswith("I")


def render_page(pairs: list[PairOutputs], methods: list[str], urls: dict[tuple[str, str], str],
                table: MeanTable | None, pair_scores: dict[tuple[str, str], dict[str, float]], convention: str,
                plots: list[str], source_labels: tuple[str, str] = ("IR", "VIS"), precision: int = 3) -> str:
    """The page's HTML. ``urls[(pair_id, layer)]`` for layers ``ir``, ``vis`` and each method;
    ``pair_scores[(pair_id, method)]`` the pair's scores; ``plots`` image URLs."""
    layers = [("ir", source_labels[0]), ("vis", source_labels[1]), *((m, m) for m in methods)]
    parts = [_HEAD, f"<h1>Fusion comparison: {len(pairs)} pairs, {len(methods)} methods</h1>"]
    if table is not None and table.methods:
        parts += ["<h2>Mean scores</h2>", _score_table(table, precision),
                  f"<p class=caption>{caption(table, convention, 'html')} "
                  "Click a column to sort (best first; again to reverse).</p>"]
    if plots:
        parts.append("<h2>Plots</h2>" + "".join(f'<img class=plot src="{url}" alt="plot">' for url in plots))
    parts.append("<h2>Pairs</h2><nav>" + " ".join(
        f'<a href="#pair-{i}">{html.escape(p.pair_id)}</a>' for i, p in enumerate(pairs)) + "</nav>")
    for index, pair in enumerate(pairs):
        parts.append(_gallery(index, pair, layers, urls, pair_scores, methods, table, precision))
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


def _marked(value: float, mark: str, precision: int) -> str:
    text = f"{value:.{precision}f}" if value == value else ""
    return {"best": f"<b>{text}</b>", "second": f"<u>{text}</u>"}.get(mark, text)


def _score_table(table: MeanTable, precision: int) -> str:
    grouped = len(table.groups) > 1
    head = "".join(
        f'<th data-col="{c + 1}" data-higher="{int(higher_is_better(m))}" data-key="{html.escape(m)}">'
        f"{html.escape((g + ' ') if grouped else '')}{html.escape(m)} {'↑' if higher_is_better(m) else '↓'}</th>"
        for c, (g, m) in enumerate((g, m) for g in table.groups for m in table.metrics))
    columns = [(table.column(g, m), table.marks(g, m, precision)) for g in table.groups for m in table.metrics]
    rows = []
    for i, method in enumerate(table.methods):
        cells = "".join(f'<td data-value="{values[i]!r}">{_marked(values[i], marks[i], precision)}</td>'
                        for values, marks in columns)
        rows.append(f"<tr><th>{html.escape(method)}</th>{cells}</tr>")
    return f'<table id=scores><thead><tr><th>method</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _gallery(index: int, pair: PairOutputs, layers, urls, pair_scores, methods, table, precision) -> str:
    pid = html.escape(pair.pair_id)
    layers = [(key, label) for key, label in layers if (pair.pair_id, key) in urls]
    buttons = "".join(f'<button data-layer="{k}">{html.escape(label)}</button>' for k, (_, label) in enumerate(layers))
    options = "".join(f'<option value="{k}">{html.escape(label)}</option>' for k, (_, label) in enumerate(layers))
    images = "".join(
        f'<img class="layer{" base" if k == 0 else ""}" data-layer="{k}" data-name="{html.escape(label)}" '
        f'src="{urls[(pair.pair_id, key)]}" alt="{pid} {html.escape(label)}" loading="lazy" decoding="async">'
        for k, (key, label) in enumerate(layers))
    section = [
        f'<section class=pair id="pair-{index}" data-id="{pid}"><h3>{pid}</h3>',
        f"<div class=controls>{buttons}<span class=slide>slide <select class=a>{options}</select> | "
        f'<select class=b>{options}</select> <input class=split type=range min=0 max=100 value=50></span>'
        "<label><input class=fit type=checkbox> fit to window</label></div>",
        f"<div class=viewer><div class=stage>{images}<div class=divider></div></div></div>",
    ]
    metrics = table.metrics if table is not None else []
    scored = [m for m in methods if (pair.pair_id, m) in pair_scores]
    if metrics and scored:
        head = "".join(f"<th>{html.escape(m)} {'↑' if higher_is_better(m) else '↓'}</th>" for m in metrics)
        columns = []
        for metric in metrics:
            values = [pair_scores[(pair.pair_id, m)].get(metric, float("nan")) for m in scored]
            columns.append((values, rank_marks(values, higher_is_better(metric), precision)))
        body = "".join(f"<tr><th>{html.escape(m)}</th>" + "".join(
            f"<td>{_marked(v[i], marks[i], precision)}</td>" for v, marks in columns) + "</tr>" for i, m in enumerate(scored))
        section.append(f"<table class=pair-scores><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>")
    section.append("</section>")
    return "".join(section)


_HEAD = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>fuse report</title>
<meta name=viewport content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.2em .6em;text-align:right;border-bottom:1px solid #ddd}
tbody th{text-align:left}#scores thead th{cursor:pointer;user-select:none}#scores thead th.sorted{background:#eef}
.caption{color:#555;max-width:60em}.plot{max-width:100%}nav a{margin-right:.6em}
section.pair{margin:2em 0;border-top:2px solid #ccc}
.controls{margin:.4em 0}.controls button{margin-right:.2em}.controls button.on{background:#246;color:#fff}
.controls .slide{margin:0 1em}
.viewer{overflow:auto;max-height:85vh;border:1px solid #ccc;display:inline-block;max-width:100%}
.stage{position:relative;display:inline-block;line-height:0}
.stage img{display:block;max-width:none;image-rendering:auto}
.stage img.layer:not(.base){position:absolute;left:0;top:0;width:100%;height:100%;display:none}
.stage img.base{visibility:hidden;position:relative}
.viewer.fit .stage img.base{max-width:calc(100vw - 5em)}
.stage .divider{position:absolute;top:0;bottom:0;width:2px;margin-left:-1px;background:#ff0;box-shadow:0 0 0 1px #000;z-index:3;display:none;pointer-events:none}
img.broken{outline:3px solid red}
</style></head><body>"""

_SCRIPT = r"""
(function () {
  const params = new URLSearchParams(location.hash.slice(1));
  function remember(key, value) {
    if (value === null) params.delete(key); else params.set(key, value);
    history.replaceState(null, '', '#' + params.toString());
  }
  // Score table: click a header to sort, best first; again to reverse.
  const table = document.getElementById('scores');
  function sortBy(th, reverse) {
    const col = +th.dataset.col, higher = th.dataset.higher === '1';
    const body = table.tBodies[0], rows = Array.from(body.rows);
    const value = r => { const v = parseFloat(r.cells[col].dataset.value); return isNaN(v) ? null : v; };
    rows.sort((a, b) => {
      const x = value(a), y = value(b);
      if (x === null || y === null) return (x === null) - (y === null);
      const d = higher ? y - x : x - y;
      return reverse ? -d : d;
    });
    rows.forEach(r => body.appendChild(r));
    table.querySelectorAll('thead th').forEach(h => h.classList.remove('sorted'));
    th.classList.add('sorted');
    th.dataset.reverse = reverse ? '1' : '0';
  }
  if (table) {
    table.querySelectorAll('thead th[data-col]').forEach(th => th.addEventListener('click', () => {
      const reverse = th.classList.contains('sorted') && th.dataset.reverse !== '1';
      sortBy(th, reverse);
      remember('sort', (reverse ? '-' : '') + th.dataset.key);
    }));
    const wanted = params.get('sort');
    if (wanted) {
      const th = table.querySelector(`thead th[data-key="${CSS.escape(wanted.replace(/^-/, ''))}"]`);
      if (th) sortBy(th, wanted.startsWith('-'));
    }
  }
  // Galleries: show one layer, or slide between two.
  document.querySelectorAll('section.pair').forEach(section => {
    const layers = Array.from(section.querySelectorAll('img.layer'));
    const base = layers[0], divider = section.querySelector('.divider');
    const a = section.querySelector('select.a'), b = section.querySelector('select.b');
    const split = section.querySelector('input.split'), buttons = section.querySelectorAll('button');
    function reveal(img, on) {
      if (img === base) img.style.visibility = on ? 'visible' : 'hidden';
      else img.style.display = on ? 'block' : 'none';
      img.style.clipPath = '';
      img.style.zIndex = '';
    }
    function show(k) {
      layers.forEach((img, i) => reveal(img, i === k));
      buttons.forEach((btn, i) => btn.classList.toggle('on', i === k));
      divider.style.display = 'none';
      section.dataset.view = 'show:' + k;
    }
    function compare() {
      const left = +a.value, right = +b.value, p = +split.value;
      layers.forEach((img, i) => reveal(img, i === left || i === right));
      if (right !== left) {
        layers[right].style.clipPath = `inset(0 0 0 ${p}%)`;
        layers[right].style.zIndex = 2;
        layers[left].style.zIndex = 1;
      }
      divider.style.display = right !== left ? 'block' : 'none';
      divider.style.left = p + '%';
      buttons.forEach(btn => btn.classList.remove('on'));
      section.dataset.view = `compare:${left},${right}@${p}`;
    }
    buttons.forEach((btn, i) => btn.addEventListener('click', () => show(i)));
    [a, b, split].forEach(el => el.addEventListener('input', compare));
    section.querySelector('.stage').addEventListener('mousemove', e => {
      if (divider.style.display !== 'block' || !e.buttons) return;
      const box = e.currentTarget.getBoundingClientRect();
      split.value = Math.round(100 * (e.clientX - box.left) / box.width);
      compare();
    });
    section.querySelector('input.fit').addEventListener('change', e =>
      section.querySelector('.viewer').classList.toggle('fit', e.target.checked));
    section.addEventListener('keydown', e => { const k = +e.key - 1; if (k >= 0 && k < layers.length) show(k); });
    section.tabIndex = 0;
    layers.forEach(img => {
      const done = () => { img.dataset.loaded = img.naturalWidth + 'x' + img.naturalHeight; };
      if (img.complete && img.naturalWidth) done(); else img.addEventListener('load', done);
      img.addEventListener('error', () => img.classList.add('broken'));
    });
    const names = layers.map(img => img.dataset.name);
    const pairs = (params.get('compare') || '').split(',').map(n => names.indexOf(n));
    if (pairs.length === 2 && pairs.every(k => k >= 0)) {
      a.value = pairs[0]; b.value = pairs[1]; split.value = params.get('split') || 50; compare();
    } else {
      const k = names.indexOf(params.get('show'));
      show(k >= 0 ? k : 0);
    }
  });
  document.body.dataset.ready = '1';
})();
"""
