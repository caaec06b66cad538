"""The bottom layer: image I/O (:mod:`~stages.core.images`), JSON-Lines records
(:mod:`~stages.core.records`), provenance recipes (:mod:`~stages.core.provenance`) and the
stage contract with its error (:mod:`~stages.core.stage`). It imports no other part of fuse."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fuse-cli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"
