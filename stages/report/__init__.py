"""Paper-ready output from scored and fused pairs: marked tables, comparison figures, an HTML report.

Plain numpy, matplotlib and string work (no torch), so ``fuse score``, ``fuse figure``
and ``fuse report`` stay quick to start:

* :mod:`stages.report.table`  — mean-score tables in LaTeX (booktabs) and Markdown,
  best value bold and second underlined per column, arrows from each metric's direction;
* :mod:`stages.report.figure` — the qualitative grid (pairs × [IR, VIS, methods]) with
  boxed zoom regions enlarged in a corner;
* :mod:`stages.report.html`   — one static page: sortable table, plots, per-pair gallery.
"""
