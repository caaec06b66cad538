"""Image-fusion quality metrics, value-for-value with the two reference families of the field.

``compute_metrics(ir, vis, fused, names, convention)`` scores one fused image. Each metric
has a ``mmif`` and a ``vifb`` definition (often the same function); the docstrings of the
functions in ``intensity``, ``structural``, ``gradient`` and ``perceptual`` record the
window, constants, data range, units and quirks each reproduces. Registration accuracy
lives in ``registration_metrics``.

The metric table and its functions (numpy, SciPy, OpenCV) load on first use, so a
command that only shows its help, or never scores, does not import them.
"""
from __future__ import annotations

CONVENTIONS: tuple[str, ...] = ("mmif", "vifb")
DEFAULT_CONVENTION = "mmif"
#: The fusion metrics in table order: the keys of ``METRICS``, named here so ``--help`` and shell completion import nothing.
METRIC_NAMES: tuple[str, ...] = ("EN", "SD", "SF", "AG", "EI", "MI", "CE", "PSNR", "MSE", "RMSE", "SSIM", "MS-SSIM",
                                 "CC", "SCD", "VIF", "Qabf", "Nabf", "Qcv", "Qcb")
#: Registration metrics (lower EPE/MAE, higher NCC is better), reported with --grid-gt / --aligned.
REGISTRATION_METRICS: tuple[str, ...] = ("EPE", "MAE", "NCC")

CONVENTION_HELP = (
    "Fusion papers compute the 'same' metric in incompatible ways, so every score names "
    "its convention. 'mmif' (default) reproduces the Python evaluator of CDDFuse "
    "(MMIF-CDDFuse utils/Evaluator.py), used by CDDFuse, DDFM, EMMA and most recent "
    "deep-learning papers: every image becomes OpenCV's BGR2GRAY luminance rounded to "
    "integers, A = IR and B = VIS, MI is in nats, SSIM is scikit-image's (sum of two "
    "scores, about 1.0); metrics that evaluator lacks follow Tang's 2023 MATLAB code "
    "(MS-SSIM, Nabf with its argument order corrected) or VIFB (Qcv, Qcb, EI, CE). "
    "'vifb' reproduces the VIFB benchmark's MATLAB metrics (Zhang et al., CVPRW 2020) "
    "and the Qcv/Qcb of Liu's toolbox it ships: colour fused images are scored per "
    "channel and averaged (gray sources reused for every channel), a gray fused image "
    "is compared with MATLAB-rgb2gray sources, MI is in nats after min-max stretching, "
    "SSIM uses Wang's 11x11 Gaussian window (sum of two, about 1.3-1.6) and PSNR lands "
    "near 60 dB. Pick the convention of the paper whose table you compare with."
)

_LOADED_ON_USE = {"METRICS": ".table", "MetricInfo": ".table", "compute_metrics": ".table",
                  "registration_metrics": ".registration"}


def __getattr__(name: str):
    if name in _LOADED_ON_USE:
        import importlib

        return getattr(importlib.import_module(_LOADED_ON_USE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CONVENTIONS", "CONVENTION_HELP", "DEFAULT_CONVENTION", "METRICS", "METRIC_NAMES", "MetricInfo",
           "REGISTRATION_METRICS", "compute_metrics", "registration_metrics"]
