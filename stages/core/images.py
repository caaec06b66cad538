"""Image reading and writing for what cameras and datasets really give.

Reading returns ``float32`` arrays in [0, 1]:

* ``(H, W)`` for gray images — including gray stored as 3-channel files
  (all three channels equal), which are collapsed to one channel;
* ``(H, W, 3)`` RGB for colour images; an alpha channel is dropped.

Bit depths and the normalisation rule (documented in ``fuse --help`` too):

* 8-bit: ``value / 255``.
* 16-bit: when the values span at least half of the 16-bit range the image is
  a full-scale picture and is read as ``value / 65535`` (so a 16-bit file we
  wrote reads back exactly); otherwise it is treated as radiometric IR (raw
  counts crowded into a narrow band) and stretched linearly so that its 0.1th
  and 99.9th percentiles map to 0 and 1, clipped.
* float TIFF: min–max stretched to [0, 1]; a NaN or infinite pixel is an error
  naming the file (no-data is not guessed).

An image larger than ``FUSE_MAX_PIXELS`` pixels (environment variable, default
:data:`DEFAULT_MAX_PIXELS`) is refused from its header, before any pixel is
decoded, whatever the format.

JPG, BMP and friends go through imageio (Pillow); TIFF through tifffile,
which reads 16-bit and float radiometric files that Pillow does not. PNGs go
through OpenCV when they are 16-bit colour (Pillow reads those as 8-bit) or plain
8-bit gray, RGB or RGBA (OpenCV decodes these faster, to the same values; a damaged
one that OpenCV refuses goes on to Pillow), the others (palette, gray + alpha,
1 to 4 bits) through Pillow. PNGs are written by OpenCV.
Every write goes to a temporary name in the target folder and is renamed into
place, so an interrupted run never leaves a partial image.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import re
import socket
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
from PIL import Image

# Our limit (max_pixels, checked from the header for every format) replaces Pillow's,
# which covers only Pillow's formats and would refuse before ours speaks.
Image.MAX_IMAGE_PIXELS = None

TIFF_SUFFIXES = {".tif", ".tiff"}
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own refusal threshold (2 × Image.MAX_IMAGE_PIXELS), for every format
MAX_PIXELS_ENV = "FUSE_MAX_PIXELS"
FULL_SCALE_SPAN = 0.5  # 16-bit images spanning at least this fraction of 0..65535 are not stretched
RADIOMETRIC_PERCENTILES = (0.1, 99.9)
PNG_COMPRESSION = 1  # zlib level of written PNGs: the fastest; --png-compression 9 for the smallest files
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as kornia's rgb_to_ycbcr


class ImageError(ValueError):
    """An image that cannot be read or written; the message names the file."""


# A file named as one of the common formats must start with one of their signatures
# (any of them: a PNG saved as .jpg still decodes). A file that starts with none is
# rejected here with one stable message, whatever decoder plugins are installed
# (ultralytics, once imported, patches PIL.Image.open to try installing a HEIF
# plugin whenever Pillow cannot identify a file).
CHECKED_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"\xff\xd8\xff",  # JPEG
    b"BM",  # BMP
    b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",  # TIFF, BigTIFF
)


def _check_signature(path: Path) -> None:
    if path.suffix.lower() not in CHECKED_SUFFIXES:
        return
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise ImageError(f"{path}: unreadable image (the file is empty)")
    if not head.startswith(SIGNATURES):
        raise ImageError(f"{path}: unreadable image (not a PNG, JPEG, BMP or TIFF file: it starts {head[:4]!r})")


def max_pixels() -> int:
    """The pixel limit: ``$FUSE_MAX_PIXELS`` when set, else :data:`DEFAULT_MAX_PIXELS`."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        raise ImageError(f"{MAX_PIXELS_ENV}={text!r}: not a number of pixels") from None
    if value < 1:
        raise ImageError(f"{MAX_PIXELS_ENV}={text!r}: must be at least 1")
    return value


def _header_shape(path: Path) -> tuple[int, ...]:
    """The array shape the file declares, read from its header only (no pixel data)."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        with tifffile.TiffFile(path) as tif:
            return tuple(tif.series[0].shape)
    with Image.open(path) as im:
        return (getattr(im, "n_frames", 1), im.size[1], im.size[0])


def _check_pixels(path: Path) -> None:
    """Refuse an image declaring more than :func:`max_pixels` pixels, before decoding it."""
    shape = [int(n) for n in _header_shape(path)]
    if len(shape) >= 3 and shape[-1] <= 4:
        shape = shape[:-1]  # interleaved channels
    elif len(shape) >= 3 and shape[0] <= 4:
        shape = shape[1:]  # planar channels, or a single frame
    pixels, limit = int(np.prod(shape, dtype=object)), max_pixels()
    if pixels > limit:
        size = "x".join(str(n) for n in reversed(shape))
        raise ImageError(f"{path}: image of {size} = {pixels:,} pixels exceeds the limit of {limit:,} "
                         f"(raise it with {MAX_PIXELS_ENV}=N)")


def _decode(path: Path) -> np.ndarray:
    _check_signature(path)
    _check_pixels(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return tifffile.imread(path)
    bits, colour = _png_header(path)
    if bits == 16 and colour in (PNG_RGB, PNG_RGBA):  # Pillow reads these as 8-bit, dropping the low byte
        img = _decode_opencv(path)
        if img is None:
            raise ValueError("its PNG chunks are damaged (a CRC mismatch or a truncated file)")
        return img
    if bits == 8 and colour in (PNG_GRAY, PNG_RGB, PNG_RGBA):
        img = _decode_opencv(path)
        if img is not None:
            return img
    return iio.imread(path)


PNG_GRAY, PNG_RGB, PNG_RGBA = 0, 2, 6  # PNG colour types (palette 3 and gray + alpha 4 are left to Pillow)


def _png_header(path: Path) -> tuple[int | None, int | None]:
    """The bits per sample and colour type a PNG's header declares, whatever its suffix; ``(None, None)`` if no PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if not head.startswith(SIGNATURES[0]) or len(head) < 26:
        return None, None
    return head[24], head[25]


def _decode_opencv(path: Path) -> np.ndarray | None:
    """Decode a PNG with OpenCV, channels in RGB(A) order; ``None`` when its chunks are damaged.

    libpng prints its own error line for a damaged file, so the chunks are checked first
    (:func:`_png_chunks_intact`) and OpenCV only sees intact ones; the caller reports the others.
    """
    import cv2

    data = np.fromfile(path, np.uint8)
    if not _png_chunks_intact(data):
        return None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim == 2:
        return img
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)


def _png_chunks_intact(data: np.ndarray) -> bool:
    """Every chunk of a PNG file's bytes (uint8, read whole) after the signature is complete with a matching
    CRC, and the last is ``IEND``; read through a memoryview, without copying the file."""
    view, pos = memoryview(data), len(SIGNATURES[0])
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", view[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data) or zlib.crc32(view[pos + 4:end - 4]) != struct.unpack(">I", view[end - 4:end])[0]:
            return False
        if kind == b"IEND":
            return True
        pos = end
    return False


def _normalise(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.dtype == np.uint8:
        return np.divide(raw, np.float32(255.0), dtype=np.float32)  # one pass, no uint8 -> float32 temporary
    if raw.dtype in (np.uint16, np.int16, np.uint32, np.int32):
        data = raw.astype(np.float32)
        lo, hi = float(data.min()), float(data.max())
        if hi - lo >= FULL_SCALE_SPAN * 65535.0:
            return np.clip(data / 65535.0, 0.0, 1.0)
        lo, hi = np.percentile(data, RADIOMETRIC_PERCENTILES)
        return _stretch(data, lo, hi)
    if raw.dtype == np.bool_:
        return raw.astype(np.float32)
    if np.issubdtype(raw.dtype, np.floating):
        data = raw.astype(np.float32)
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise ImageError(f"{path}: {bad} of {data.size} pixel values are NaN or infinite")
        return _stretch(data, float(data.min()), float(data.max()))
    raise ImageError(f"{path}: unsupported pixel type {raw.dtype}")


def _stretch(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros_like(data)
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0)


def _channels(img: np.ndarray, path: Path) -> np.ndarray:
    if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[2] not in (3, 4):
        img = np.moveaxis(img, 0, -1)  # planar TIFF (C, H, W)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] == 4:  # RGBA: drop alpha
        img = img[..., :3]
    if img.ndim == 3 and img.shape[2] == 3:
        if np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]):
            img = img[..., 0]  # gray stored as RGB
    if img.ndim not in (2, 3) or img.ndim == 3 and img.shape[2] != 3:
        raise ImageError(f"{path}: cannot interpret an image of shape {img.shape}")
    return np.ascontiguousarray(img)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as float32 in [0, 1], ``(H, W)`` gray or ``(H, W, 3)`` RGB.

    >>> read_image("ir/00001.png").shape   # doctest: +SKIP
    (480, 640)
    """
    path = Path(path)
    return _normalise(_read_pixels(path), path)


def read_uint8(path: str | os.PathLike) -> np.ndarray:
    """Read an image as 8-bit, the way the fusion-metric reference code does (``uint8``).

    An 8-bit file's values are returned as stored: ``to_uint8(read_image(path))`` gives
    the same array, through float32 and back.
    """
    path = Path(path)
    pixels = _read_pixels(path)
    return pixels if pixels.dtype == np.uint8 else to_uint8(_normalise(pixels, path))


def _read_pixels(path: Path) -> np.ndarray:
    """The decoded values, ``(H, W)`` or ``(H, W, 3)``, in the file's own type."""
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        raw = _decode(path)
    except ImageError:
        raise
    except Exception as exc:  # every decoder raises its own type
        raise ImageError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    if raw.size == 0:
        raise ImageError(f"{path}: empty image")
    return _channels(raw, path)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float → uint8 with rounding (not truncation)."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def luminance(img: np.ndarray) -> np.ndarray:
    """BT.601 luma ``Y`` of an ``(H, W, 3)`` RGB image; gray ``(H, W)`` is returned as is."""
    if img.ndim == 2:
        return img
    return img @ LUMA_WEIGHTS.astype(img.dtype)


#: Temporary names: ``.<stem>.part-<host>-<pid>-<n><suffix>`` beside the target, unique
#: per write (``n`` counts this process's writes, so threads never share one). The
#: pattern also matches ``.<stem>.part-<pid><suffix>``, what fuse wrote before.
_TEMPORARY = re.compile(r"^\..+\.part-(?:(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)-[0-9]+|(?P<old_pid>[0-9]+))(\.[^.]*)?$")
_HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=3).hexdigest()
_writes = itertools.count()


@contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path beside ``path``, unique to this write; rename it to ``path`` only on success.

    >>> with atomic_file("out/x.npy") as tmp:   # doctest: +SKIP
    ...     np.save(tmp, grid)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_path(path: Path, pid: int | None = None) -> Path:
    """A new temporary name for ``path``, of the writing process ``pid`` (default: this one) on this host."""
    return path.with_name(f".{path.stem}.part-{_HOST}-{pid or os.getpid()}-{next(_writes)}{path.suffix}")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of :func:`atomic_file` in ``folder`` that a killed process left; return them.

    Only names of our own pattern whose process no longer runs on this host are
    removed; a concurrent run (another shard) keeps its files, and so do names
    tagged with another host (one writing to the same shared storage).
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder yet: nothing to clean
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match or match["host"] not in (_HOST, None):
            continue
        if not _running(int(match["pid"] or match["old_pid"])) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)  # signal 0: only asks
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it runs, as another user
        pass
    return True


def write_image(path: str | os.PathLike, img: np.ndarray, bit_depth: int = 8, recipe: dict | None = None,
                png_compression: int = PNG_COMPRESSION) -> None:
    """Write ``(H, W)`` or ``(H, W, 3)`` float [0, 1] as an 8- or 16-bit file, atomically.

    The format follows the suffix (``.png``, ``.tif``, ``.jpg``, ``.bmp``). JPEG and
    BMP are 8-bit only. ``recipe`` (what made the image, :mod:`stages.core.provenance`)
    goes into the PNG text chunk ``fuse-recipe``, the TIFF ImageDescription tag or
    the JPEG comment; BMP cannot carry it. ``png_compression`` is zlib's level for
    PNG, 0–9: the default 1 (with zlib's run-length strategy and PNG's Sub filter,
    OpenCV's defaults) encodes about ten times faster than 6, for files about 7 %
    larger on MSRS; 9 gives the smallest. Every level stores the same pixels.
    """
    from stages.core.provenance import RECIPE_KEY, recipe_text

    path = Path(path)
    suffix = path.suffix.lower()
    if bit_depth not in (8, 16):
        raise ImageError(f"{path}: bit depth must be 8 or 16, not {bit_depth}")
    if bit_depth == 16 and suffix not in TIFF_SUFFIXES | {".png"}:
        raise ImageError(f"{path}: 16-bit output needs PNG or TIFF, not {suffix}")
    scale, dtype = (255.0, np.uint8) if bit_depth == 8 else (65535.0, np.uint16)
    data = np.multiply(img, scale, dtype=np.float64)  # in place from here: the same values, fewer full-size temporaries
    data = np.clip(np.rint(data, out=data), 0, scale, out=data).astype(dtype)
    text = recipe_text(recipe) if recipe is not None else None
    with atomic_file(path) as tmp:
        if suffix in TIFF_SUFFIXES:
            tags = {"description": text, "metadata": None} if text else {}
            tifffile.imwrite(tmp, data, photometric="rgb" if data.ndim == 3 else "minisblack", **tags)
        elif suffix in (".jpg", ".jpeg"):
            iio.imwrite(tmp, data, extension=suffix, quality=95, **({"comment": text.encode()} if text else {}))
        elif suffix == ".png":
            tmp.write_bytes(_png_bytes(data, RECIPE_KEY, text, png_compression))
        else:
            iio.imwrite(tmp, data, extension=suffix)


def _png_bytes(data: np.ndarray, key: str, text: str | None, level: int) -> bytes:
    """``data`` (8- or 16-bit, gray or RGB) as a PNG file by OpenCV, with ``text`` in an iTXt chunk named ``key``.

    OpenCV writes every bit depth and channel count (Pillow cannot write 16-bit RGB)
    and encodes faster; the text chunk goes right after the header, where Pillow's
    reader and every other one find it.
    """
    import cv2

    pixels = cv2.cvtColor(data, cv2.COLOR_RGB2BGR) if data.ndim == 3 else data  # OpenCV's channel order is BGR
    params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    if level <= 1:  # OpenCV's own default: run-length strategy and the Sub filter (about 2x faster, smaller files)
        params += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    ok, encoded = cv2.imencode(".png", pixels, params)
    if not ok:
        raise ImageError(f"OpenCV could not encode a {data.dtype} image of shape {data.shape} as PNG")
    png = encoded.tobytes()
    if not text:
        return png
    # iTXt: keyword, NUL, no compression (flag 0, method 0), empty language tag and translated keyword, UTF-8 text.
    body = b"iTXt" + key.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    header_end = 8 + 4 + 4 + 13 + 4  # signature; IHDR's length, type, 13 data bytes and CRC
    return png[:header_end] + chunk + png[header_end:]
