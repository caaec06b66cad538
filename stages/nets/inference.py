"""Networks prepared for inference only: BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is an affine map per channel, ``y = γ (x − μ) / √(σ² + ε) + β``, so a
``Conv2d`` directly followed by one computes the same as a single convolution with scaled
weights and a bias (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`). Folding saves one pass over
every such layer's feature map; outputs move by float32 rounding only (``tests/test_speed.py``
checks every shipped network with BatchNorm to 1e-5). The folded network has no BatchNorm left to
train, so only the fusers and the registration stage fold; training and checkpoints never see it.
"""
from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential`` into it, in place.

    The BatchNorm becomes an ``nn.Identity`` (so the module names, and any code indexing the
    ``Sequential``, stay as they were). Returns ``model``, in eval mode.
    """
    model.eval()
    for sequence in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(sequence) - 1):
            conv, norm = sequence[i], sequence[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                sequence[i], sequence[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return model
