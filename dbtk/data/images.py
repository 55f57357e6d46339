"""Image decoding with the checks training needs: corrupt and truncated files, size limits, EXIF orientation.

Pixels are decoded as stored (``IMREAD_IGNORE_ORIENTATION``) and the EXIF orientation is then applied to the
pixels *and* to the polygons with the same transform, so boxes can never end up rotated against their image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Images above this many pixels are refused before decoding (decompression-bomb guard, ~ 16k × 12k).
MAX_PIXELS = 200_000_000
#: Reductions libjpeg decodes at directly, by scaling its inverse DCT (1/8, 1/4, 1/2 of each side): several times
#: less work than a full decode, and the pixels are block averages, so no aliasing is added.
JPEG_REDUCTIONS = (8, 4, 2)


class ImageError(Exception):
    """An image that cannot be used; ``reason`` is a short code for reports (``corrupt``, ``truncated`` ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def reduced_size(width: int, height: int, reduction: int) -> tuple[int, int]:
    """(width, height) of a page decoded at 1/``reduction`` of each side: libjpeg's ceil(side / reduction)."""
    return -(-width // reduction), -(-height // reduction)


@dataclass(frozen=True)
class Decoded:
    """Decoded pixels and how they relate to the page: labels are in the page's display coordinates, whatever
    resolution the pixels were decoded at."""

    image: np.ndarray  # H×W×3 uint8 RGB, in display orientation
    orientation: int  # EXIF orientation that was applied (1 = none)
    stored_size: tuple[int, int]  # (width, height) of the page as stored in the file, before orientation
    #: The pixels are the page decoded at 1/reduction of each side (see :class:`DrawScale`); 1 = full resolution.
    reduction: int = 1

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the page in display orientation at full resolution: the frame of its labels."""
        width, height = self.stored_size
        return (height, width) if self.orientation in (5, 6, 7, 8) else (width, height)

    def consistent(self) -> bool:
        """Whether the pixels are what ``stored_size``, ``orientation`` and ``reduction`` say: ceil(side /
        reduction) a side (a reader's own ``Decoded`` could say otherwise, and its labels would miss its pixels)."""
        n = self.reduction
        if not isinstance(n, (int, np.integer)) or n < 1:
            return False
        try:
            width, height = (int(side) for side in self.size)
        except (TypeError, ValueError):  # a stored_size that is not two numbers
            return False
        shape = getattr(self.image, "shape", ())
        return len(shape) >= 2 and (shape[1], shape[0]) == reduced_size(width, height, n)

    def to_page(self) -> np.ndarray:
        """The 3×3 affine map from pixel coordinates of ``image`` to the page's display coordinates (pixel centres
        at integers): the identity at full resolution. Reduced pixel ``c`` of the stored image covers page pixels
        ``N·c … N·c + N − 1``, so its centre is ``N·c + (N − 1)/2``; the orientation maps both grids' pixel indices
        as :func:`apply_orientation` moves the pixels."""
        if self.reduction == 1:
            return np.eye(3)
        n, (width, height) = self.reduction, self.stored_size
        reduced_width, reduced_height = reduced_size(width, height, n)
        reduced = _orientation_map(self.orientation, reduced_width - 1, reduced_height - 1)
        page = _orientation_map(self.orientation, width - 1, height - 1)
        scale = np.array([[n, 0.0, (n - 1) / 2], [0.0, n, (n - 1) / 2], [0.0, 0.0, 1.0]])
        rotation, shift = reduced[:2, :2], reduced[:2, 2]  # a signed permutation: its inverse is its transpose
        unoriented = np.vstack([np.hstack([rotation.T, -(rotation.T @ shift)[:, None]]), [0.0, 0.0, 1.0]])
        return page @ scale @ unoriented  # small integers and halves throughout: exact


@dataclass(frozen=True)
class DrawScale:
    """The largest scale a consumer will draw a page at, so that a JPEG can be decoded at a fraction of its size
    (libjpeg's DCT scaling) when the page is drawn that much smaller anyway: ``most`` times the page's native size,
    or with ``fit`` set, ``most`` times the scale that fits the page's longer side in ``fit`` pixels (the training
    data's LongestMaxSize)."""

    most: float = 1.0
    fit: int | None = None

    def reduction(self, width: int, height: int) -> int:
        """The largest of :data:`JPEG_REDUCTIONS` that still leaves at least one decoded pixel per drawn pixel."""
        scale = self.most * (self.fit / max(width, height, 1) if self.fit else 1.0)
        return next((n for n in JPEG_REDUCTIONS if n * scale <= 1.0), 1)


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS, *, draw: DrawScale | None = None) -> Decoded:
    """Decode an image file to RGB uint8 with EXIF orientation applied; raises :class:`ImageError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError("unreadable", f"{path}: {exc.strerror or exc}") from None
    return decode_image(data, str(path), max_pixels, draw=draw)


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS, *, draw: DrawScale | None = None) -> Decoded:
    """Decode to RGB uint8 with EXIF orientation applied; raises :class:`ImageError`. With ``draw``, a JPEG that
    will be drawn at half its size or less is decoded reduced (:attr:`Decoded.reduction`); other formats always
    at full size (OpenCV would decode them fully and resize without averaging)."""
    import cv2

    if not data:
        raise ImageError("empty", f"{name}: empty file")
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageError("too_large", f"{name}: {size[0]}×{size[1]} exceeds the {max_pixels:,}-pixel limit")
    if is_truncated(data):
        raise ImageError("truncated", f"{name}: file is truncated")
    buffer = np.frombuffer(data, dtype=np.uint8)
    reduction = draw.reduction(*size) if draw is not None and size is not None and data[:2] == b"\xff\xd8" else 1
    image = None
    if reduction > 1:
        image = cv2.imdecode(buffer, getattr(cv2, f"IMREAD_REDUCED_COLOR_{reduction}") | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None or image.shape[1::-1] != reduced_size(*size, reduction):
            image, reduction = None, 1  # pixels that do not match the header: decode in full, as without draw
    if image is None:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.size == 0:
        raise ImageError("corrupt", f"{name}: not a decodable image")
    image = _to_rgb8(image)
    stored = size if reduction > 1 else (image.shape[1], image.shape[0])
    orientation = exif_orientation(data)
    return Decoded(apply_orientation(image, orientation), orientation, stored, reduction)


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    """Grayscale, alpha, 16-bit and CMYK-decoded images all become 3-channel 8-bit RGB."""
    import cv2

    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def is_truncated(data: bytes) -> bool:
    """JPEGs must end with the EOI marker and PNGs with an IEND chunk (trailing padding allowed)."""
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-1024:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    return False


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG SOF or PNG IHDR header without decoding; None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 < len(data):
        # Skipped as libjpeg skips them: stray bytes before a marker, and 0xFF fill bytes (allowed by the standard).
        if data[pos] != 0xFF or data[pos + 1] == 0xFF:
            pos += 1
            continue
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1–8) of a JPEG, 1 when absent or unreadable."""
    if data[:2] != b"\xff\xd8":
        return 1
    pos = 2
    while pos + 4 < len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            return _tiff_orientation(data[pos + 10 : pos + 2 + length])
        if marker == 0xDA:  # start of scan: no more metadata
            break
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    endian = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(endian + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(endian + "H", tiff[ifd : ifd + 2])
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            break
        tag, _type, _count = struct.unpack(endian + "HHI", tiff[entry : entry + 8])
        if tag == 0x0112:
            (value,) = struct.unpack(endian + "H", tiff[entry + 8 : entry + 10])
            return value if 1 <= value <= 8 else 1
    return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip stored pixels into display orientation (EXIF semantics)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1, :],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: a.transpose(1, 0, 2)[::-1, :],
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(image)) if op else image


def orient_points(points: np.ndarray, orientation: int, stored_size: tuple[int, int]) -> np.ndarray:
    """Map points from stored-pixel coordinates to display coordinates, matching :func:`apply_orientation`.

    Mirroring orientations (2, 4, 5, 7) would reverse a polygon's winding; the point order is reversed back so a
    clockwise polygon stays clockwise.
    """
    if orientation not in range(2, 9):
        return points
    nx, ny = _oriented_xy(points[..., 0], points[..., 1], orientation, *stored_size)
    oriented = np.stack([nx, ny], axis=-1).astype(points.dtype)
    return oriented[..., ::-1, :] if orientation in (2, 4, 5, 7) else oriented


def _orientation_map(orientation: int, width: float, height: float) -> np.ndarray:
    """:func:`_oriented_xy` as a 3×3 affine matrix."""
    x, y = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    nx, ny = _oriented_xy(x, y, orientation, width, height)
    origin = np.array([nx[0], ny[0]])
    linear = np.stack([[nx[1], ny[1]] - origin, [nx[2], ny[2]] - origin], axis=1)
    return np.vstack([np.hstack([linear, origin[:, None]]), [0.0, 0.0, 1.0]])


def _oriented_xy(x: np.ndarray, y: np.ndarray, orientation: int, width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) in the stored frame → display frame, mirroring about ``width`` and ``height`` (the size for label
    coordinates, the size − 1 for pixel indices)."""
    mapping = {
        2: lambda: (width - x, y),
        3: lambda: (width - x, height - y),
        4: lambda: (x, height - y),
        5: lambda: (y, x),
        6: lambda: (height - y, x),
        7: lambda: (height - y, width - x),
        8: lambda: (y, width - x),
    }
    return mapping[orientation]() if orientation in mapping else (x, y)

