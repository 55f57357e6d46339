"""Tiny hand-made datasets for data tests: clean ones and deliberately broken ones."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np


def text_image(width: int = 64, height: int = 48, boxes: tuple = ((8, 10, 40, 20),), seed: int = 0) -> np.ndarray:
    """BGR image with dark rectangles ("text") on a light background."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 220, np.uint8) + rng.integers(0, 20, (height, width, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        image[y0:y1, x0:x1] = 30
    return image


def jpeg_bytes(image_bgr: np.ndarray, orientation: int | None = None) -> bytes:
    """Encode a JPEG, optionally with an EXIF APP1 segment carrying the orientation tag."""
    ok, buffer = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    data = buffer.tobytes()
    if orientation is None:
        return data
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\x00\x00\x00\x00"
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + ifd
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def write_icdar(root: Path, items: dict[str, tuple[bytes | None, str | None]]) -> Path:
    """``items``: image name → (image bytes or None for no image, gt text or None for no gt file)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "gts").mkdir(parents=True, exist_ok=True)
    for name, (image, gt) in items.items():
        if image is not None:
            (root / "images" / name).write_bytes(image)
        if gt is not None:
            (root / "gts" / f"gt_{Path(name).stem}.txt").write_bytes(gt.encode("utf-8"))
    return root


GOOD_LINE = "8,10,40,10,40,20,8,20,hello, world"


def broken_dataset(root: Path) -> tuple[Path, dict[str, int]]:
    """An ICDAR folder with one instance of most problems, and the counts clean-data must report."""
    image = jpeg_bytes(text_image())
    items = {
        "ok.jpg": (image, "\ufeff" + GOOD_LINE + "\n8,30,30,30,30,40,8,40,###\n"),
        "nan.jpg": (image, GOOD_LINE + "\nnan,1,5,1,5,9,1,9,bad\n"),
        "outside.jpg": (image, "50,10,80,10,80,20,50,20,half out\n100,100,120,100,120,110,100,110,gone\n"),
        "bowtie.jpg": (image, "8,10,40,20,40,10,8,20,crossed\n"),
        "ccw.jpg": (image, "8,10,8,20,40,20,40,10,anticlockwise\n"),
        "flat.jpg": (image, "8,10,20,10,30,10,40,10,line\n"),
        "dupes.jpg": (image, "8,10,8,10,40,10,40,20,8,20\n8,10,8,10,8,10,8,10,point\n"),
        "badline.jpg": (image, GOOD_LINE + "\n1,2,3\nx,1,2,3,4,5,6,7,text\n"),
        "nogt.jpg": (image, None),
        "truncated.jpg": (image[: len(image) // 2], GOOD_LINE + "\n"),
        "corrupt.jpg": (b"this is not an image at all" * 10, GOOD_LINE + "\n"),
        "rotated.jpg": (jpeg_bytes(text_image(), orientation=6), GOOD_LINE + "\n"),
    }
    expected = {
        "non_finite": 1,
        "out_of_bounds": 1,
        "outside_image": 1,
        "self_intersection": 1,
        "orientation": 1,
        "zero_area": 1,
        "no_valid_polygons": 1,  # flat.jpg: its only polygon is a line
        "duplicate_points": 2,
        "too_few_points": 1,
        "bad_line": 2,
        "missing_gt": 1,
        "truncated": 1,
        "corrupt": 1,
        "exif_rotated": 1,
    }
    return write_icdar(root, items), expected
