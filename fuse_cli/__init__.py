"""fuse: multimodal image fusion as composable command-line stages."""
from stages.core import __version__

__all__ = ["__version__"]
