"""The benchmark suite: bench_quality's table on one TNO pair, and run.py's report on canned outputs."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import ROOT, shared


def load_run_module():
    """``benchmarks/run.py`` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = sys.modules.setdefault("bench_run", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


def test_bench_quality_table_has_a_row_per_method(tmp_path):
    shared("tno")
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_quality.py", "--sets", "tno", "--methods", "mean", "max", "--limit", "1",
         "--metrics", "EN", "SSIM", "--workers", "1", "--cache", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    (caption, rows), = load_run_module().markdown_tables(result.stdout)
    assert caption.startswith("### TNO: 1 pairs")
    by_method = {row["method"]: row for row in rows}
    for method in ("mean", "max"):
        assert float(by_method[method]["EN ↑"]) > 0 and float(by_method[method]["SSIM ↑"]) > 0
    assert (tmp_path / "tno" / "mean").is_dir()


FUSE_OUT = """`fuse fuse` on 2 pairs of msrs

| method | s total | ms / pair | pairs/s |
|---|---:|---:|---:|
| read 2 + write 1 (no fusion) | 0.20 | 100.0 | 10.00 |
| mean | 0.40 | 200.0 | 5.00 |
| gff | 1.00 | 500.0 | 2.00 |
| mgfusion | no weights | | |
"""
QUALITY_OUT = """
### TNO: 2 pairs, mmif convention, mean over pairs

| method | EN ↑ | Qabf ↑ |
|---|---:|---:|
| mean | 6.4 | 0.33 |
| gff | **7.2** | **0.64** |
| SDNet (published) | 6.3 | 0.42 |
"""


def test_report_has_every_section_and_names_the_failure(tmp_path):
    run = load_run_module()
    sections = [
        run.Section("fuse", "Throughput", "python benchmarks/bench_fuse.py", FUSE_OUT),
        run.Section("quality", "Fusion quality", "python benchmarks/bench_quality.py", QUALITY_OUT),
        run.Section("masks", "Mask quality", "python benchmarks/bench_masks.py", "", "Traceback\nOSError: boom\n", 1),
    ]
    assert run.plot_report(sections, tmp_path / "report.png") is None
    assert (tmp_path / "report.png").stat().st_size > 0
    report = run.assemble_report(sections, ["- CPU: test"], "report.png")
    for section in sections:
        assert f"## {section.title}\n\n`{section.command}`" in report
    assert "| gff | **7.2** | **0.64** |" in report
    assert "**Failed:** masks (exit 1)" in report and "OSError: boom" in report
    assert "![throughput and quality vs speed](report.png)" in report


def test_bench_register_tables_show_registration_helping_fusion(tmp_path):
    shared("unaligned/roadscene")
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_register.py", "--methods", "none", "ecc", "--limit", "2", "--cache", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    (_, registration), (_, fusion) = load_run_module().markdown_tables(result.stdout)
    epe = {row["method"]: float(row["EPE px mean"]) for row in registration}
    assert epe["ecc"] < 0.5 * epe["none"]
    ssim = {row["method"]: float(row["SSIM ↑"]) for row in fusion}
    assert list(ssim) == ["laplacian, IR unaligned", "laplacian, IR registered by ecc", "laplacian, IR aligned (ground truth)"]
    assert ssim["laplacian, IR unaligned"] < ssim["laplacian, IR registered by ecc"] < ssim["laplacian, IR aligned (ground truth)"]


def load_bench_register():
    """``benchmarks/bench_register.py`` as a module."""
    spec = importlib.util.spec_from_file_location("bench_register", ROOT / "benchmarks" / "bench_register.py")
    module = sys.modules.setdefault("bench_register", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


def test_bench_register_deforms_night_pairs_reproducibly_in_the_dataset_convention():
    """``--deform``: the same field per pair id every run, and undoing it exactly scores 0 px."""
    import numpy as np
    import torch

    from stages.metrics.registration import residual_displacement
    from stages.register import apply_grid
    from stages.training.registration import invert_grid

    bench = load_bench_register()
    first, again = bench.deformed_pairs(shared("msrs"), limit=2), bench.deformed_pairs(shared("msrs"), limit=2)
    assert [p["id"] for p in first] == ["00004N", "00008N"]
    assert np.array_equal(first[0]["deformation"], again[0]["deformation"])
    assert not np.allclose(first[0]["deformation"], first[1]["deformation"])
    for pair in first:
        h, w = pair["vis"].shape
        unregistered, valid = residual_displacement(bench.identity_grid(h, w), pair["deformation"])
        correction = invert_grid(torch.from_numpy(pair["deformation"])[None])[0].numpy()
        error, inside = residual_displacement(correction, pair["deformation"])
        assert unregistered[valid].mean() > 5 and error[inside].mean() < 0.5
        registered, _ = apply_grid(pair["ir"], correction)
        interior = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))  # away from the zero padding
        assert np.abs(registered[interior] - pair["aligned"][interior]).mean() < 0.03
