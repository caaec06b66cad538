"""fuse: multimodal image fusion as composable command-line stages."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fuse-cli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"
