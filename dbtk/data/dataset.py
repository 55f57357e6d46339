"""The training dataset: reader → EXIF + polygon repair → augmentation → DB targets. Never yields ``None``.

A sample that cannot be used (corrupt image, nothing valid left of its labels) is counted by reason, logged once
per reason, and replaced by another index; the counts travel with each sample so the training loop can report
them from any number of worker processes.

Indices may exceed the dataset length: index ``g`` is sample ``g % len`` in epoch ``g // len``, and all
randomness derives from (seed, epoch, sample), so a run is reproducible with any worker count and on resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import mmap
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from dbtk.data.augment import AugmentConfig, color_jitter, crop_labels, random_affine, warp
from dbtk.data.images import DrawScale, ImageError
from dbtk.data.labels import prepare
from dbtk.data.reader import takes_draw
from dbtk.data.targets import make_targets
from dbtk.errors import DbtkError
from dbtk.io.atomic import atomic_write

if TYPE_CHECKING:
    from dbtk.data.reader import RawSample, Reader
    from dbtk.recipe import Data

log = logging.getLogger("dbtk.data")

#: Bump when the cached content, its meaning or its file format changes: old entries then never match.
# 3: targets from edge-line distances + corner wedges, centres inside by even-odd; 4: uint8 masks; 5: pages
# decoded reduced where drawn at half size or less, with their size and pixel-to-page map
CACHE_VERSION = 5
#: Cache entries start with these bytes (a file of another format, or a damaged one, is a miss).
CACHE_MAGIC = b"DBTKRAW\x01"
CACHE_SUFFIX = ".raw"
#: Arrays start at multiples of this many bytes: aligned for any dtype and for SIMD loads.
CACHE_ALIGN = 64
#: How many other samples to try before giving up on a batch slot.
MAX_REPLACEMENTS = 16
#: What a cache entry of a page (before augmentation) holds.
PAGE_ENTRY = {"image", "points", "lengths", "ignore", "size", "to_page"}
TARGET_KEYS = ("shrink_map", "shrink_mask", "thresh_map", "thresh_mask")
#: The targets that are 0/1 masks: uint8 from the loader to the device, float32 from there on (:func:`as_float`).
MASK_KEYS = ("shrink_map", "shrink_mask", "thresh_mask")


class SampleError(Exception):
    """A sample that must be skipped; ``reason`` is its report category, ``repairs`` what the label path changed
    before deciding (counted like any other sample's, so training reports what clean-data reports)."""

    def __init__(self, reason: str, message: str, repairs: Counter | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.repairs = repairs or Counter()


class Page(NamedTuple):
    """A sample before augmentation: its pixels, its labels after the one label path in the page's coordinates,
    and what the label path repaired."""

    image: np.ndarray
    polygons: list[np.ndarray]
    ignore: list[bool]
    repairs: Counter
    size: tuple[int, int]  # (width, height) of the page at full resolution: the labels' frame
    to_page: np.ndarray  # 3×3, image pixel → page coordinates: the identity unless the page was decoded reduced


def usable_labels(sample: RawSample, exif: str) -> Page:
    """The one label path (:func:`dbtk.data.labels.prepare`) for training, or :class:`SampleError` when the
    sample must be skipped."""
    decoded = sample.decoded
    if not decoded.consistent():
        raise SampleError("bad_reduction", f"{sample.name}: the reader's {decoded.image.shape[1]}×{decoded.image.shape[0]} "
                          f"pixels are not its page (stored as {decoded.stored_size!r}) reduced {decoded.reduction!r} times")
    labels = prepare(sample, exif)
    if labels.skip:
        raise SampleError(labels.skip, f"{sample.name}: {labels.skip_detail}", labels.repairs)
    return Page(labels.image, labels.polygons, labels.ignore, labels.repairs, decoded.size, decoded.to_page())


class SampleCache:
    """On-disk cache of prepared samples; the key hashes the source identity, every parameter and a version.

    An entry is one file of raw arrays, read back as memory maps: :data:`CACHE_MAGIC`, the length of a JSON header
    (little-endian uint32), the header (each array's name, dtype, shape and offset), then each array's bytes at a
    :data:`CACHE_ALIGN`-byte boundary. Reading costs a few system calls, not a decode or a copy: the warp later
    touches only the page rows its crop needs. Entries are written through :func:`dbtk.io.atomic.atomic_write`, so
    a crash never leaves a half entry (a memory map of a replaced file keeps the old, complete one).
    """

    def __init__(self, folder: str | Path, parameters: dict[str, Any]) -> None:
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.parameters = json.dumps({"version": CACHE_VERSION, **parameters}, sort_keys=True)

    def key(self, identity: str) -> str:
        return hashlib.sha256(f"{self.parameters}|{identity}".encode()).hexdigest()

    def path(self, identity: str) -> Path:
        return self.folder / f"{self.key(identity)}{CACHE_SUFFIX}"

    def get(self, identity: str) -> dict[str, np.ndarray] | None:
        """The entry's arrays (read-only, memory-mapped), or None when there is none or it is damaged."""
        try:
            with open(self.path(identity), "rb") as stream:
                prefix = stream.read(len(CACHE_MAGIC) + 4)
                if len(prefix) != len(CACHE_MAGIC) + 4 or not prefix.startswith(CACHE_MAGIC):
                    return None
                length = int.from_bytes(prefix[len(CACHE_MAGIC) :], "little")
                header = json.loads(stream.read(length))
                mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
            start = _aligned(len(prefix) + length)
            return {
                name: np.frombuffer(mapped, np.dtype(dtype), math.prod(shape), start + offset).reshape(shape)
                for name, dtype, shape, offset in header
            }
        except (OSError, ValueError, TypeError):  # missing, or damaged by something outside dbtk
            return None

    def put(self, identity: str, arrays: dict[str, np.ndarray]) -> None:
        """Store ``arrays``; a full disk or an unwritable folder only costs the cache hit, never the sample."""
        contiguous = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
        header, end = [], 0  # offsets from the data start, which follows the header at an aligned position
        for name, array in contiguous.items():
            header.append((name, array.dtype.str, array.shape, end))
            end = _aligned(end + array.nbytes)
        encoded = json.dumps(header).encode()
        start = _aligned(len(CACHE_MAGIC) + 4 + len(encoded))

        def write(temporary: str) -> None:
            with open(temporary, "wb") as stream:
                stream.write(CACHE_MAGIC + len(encoded).to_bytes(4, "little") + encoded)
                for (_, _, _, offset), array in zip(header, contiguous.values(), strict=True):
                    stream.seek(start + offset)
                    stream.write(array.data)
                stream.truncate(start + end)  # every offset lies inside the file, even an empty last array's

        with contextlib.suppress(OSError):
            atomic_write(self.path(identity), write)


def _aligned(offset: int) -> int:
    return -(-offset // CACHE_ALIGN) * CACHE_ALIGN


def resolve_cache_folder(setting: str) -> Path | None:
    if setting == "off":
        return None
    if setting == "auto":
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "dbtk" / "samples"
    return Path(setting)


def _pack_polygons(polygons: list[np.ndarray], ignore: list[bool]) -> dict[str, np.ndarray]:
    return {
        "points": np.concatenate(polygons).astype(np.float32) if polygons else np.zeros((0, 2), np.float32),
        "lengths": np.array([len(p) for p in polygons], dtype=np.int64),
        "ignore": np.array(ignore, dtype=bool),
    }


def _unpack_polygons(arrays: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[bool]]:
    points, ends = arrays["points"], np.cumsum(arrays["lengths"]).tolist()
    return [points[start:end] for start, end in zip([0, *ends][:-1], ends, strict=True)], arrays["ignore"].tolist()


class DetectionDataset:
    """Map-style dataset (usable by ``torch.utils.data.DataLoader``) producing fixed-size training samples."""

    def __init__(self, reader: Reader, data: Data, *, train: bool = True, seed: int = 0) -> None:
        if len(reader) == 0:
            raise DbtkError("the dataset is empty", hint="check data.train / data.val and the format")
        self.reader = reader
        self.config = AugmentConfig.from_recipe(data, train)
        self.seed = seed
        self.shrink_ratio, self.thresh_min, self.thresh_max = data.shrink_ratio, data.thresh_min, data.thresh_max
        self.min_text_size = data.min_text_size
        #: Without randomness the whole sample is a pure function of its source: cache targets too.
        self.deterministic = not self.config.random and not self.config.crop
        #: How small pages are drawn at most: a JPEG drawn at half its size or less is decoded reduced.
        self.draw = DrawScale(self.config.scale_max, None if self.config.crop else self.config.size)
        #: Plugin readers written before ``draw`` existed take ``load(i)`` only.
        self._load_draws = takes_draw(reader)
        folder = resolve_cache_folder(data.cache)
        parameters = {"exif": reader.exif, "stage": "full" if self.deterministic else "decoded",
                      "draw": [self.draw.most, self.draw.fit] if self._load_draws else None}
        if self.deterministic:
            parameters.update(
                size=self.config.size, shrink_ratio=data.shrink_ratio, thresh_min=data.thresh_min,
                thresh_max=data.thresh_max, min_text_size=data.min_text_size,
            )
        self.cache = SampleCache(folder, parameters) if folder else None
        self._logged: set[str] = set()

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: Counter = Counter()
        repairs: Counter = Counter()
        n = len(self.reader)
        epoch, first = divmod(int(index), n)
        for attempt in range(MAX_REPLACEMENTS):
            sample_index = (first + attempt * 7919) % n  # a fixed, well-spread replacement order
            try:
                sample = self._build(sample_index, epoch)
            except (ImageError, SampleError) as exc:
                skipped[exc.reason] += 1
                repairs.update(getattr(exc, "repairs", ()))
                self._log_once(exc.reason, str(exc))
                continue
            sample["skipped"] = dict(skipped)
            sample["repairs"] = dict(repairs + Counter(sample["repairs"]))
            return sample
        raise DbtkError(
            f"{MAX_REPLACEMENTS} samples in a row could not be loaded (last: {', '.join(skipped)})",
            hint="run 'dbtk clean-data SRC --check' to see what is wrong with the data",
        )

    def _log_once(self, reason: str, message: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("skipping sample (%s): %s; further '%s' samples are counted silently", reason, message, reason)

    def page(self, index: int) -> Page:
        """Sample ``index`` before augmentation (its repair counts are empty on a cache hit: they were counted when
        the entry was made). Raises :class:`dbtk.data.images.ImageError` or :class:`SampleError` for a sample to
        skip."""
        identity = self.reader.identity(index) if self.cache else ""
        if self.cache and not self.deterministic:
            hit = self.cache.get(identity)
            if hit is not None and PAGE_ENTRY <= hit.keys():  # an entry lacking one is not this version's
                polygons, ignore = _unpack_polygons(hit)
                width, height = hit["size"].tolist()
                return Page(hit["image"], polygons, ignore, Counter(), (width, height), hit["to_page"])
        sample = self.reader.load(index, draw=self.draw) if self._load_draws else self.reader.load(index)
        page = usable_labels(sample, self.reader.exif)
        if self.cache and not self.deterministic:
            frame = {"size": np.array(page.size, np.int64), "to_page": page.to_page}
            self.cache.put(identity, {"image": page.image, **_pack_polygons(page.polygons, page.ignore), **frame})
        return page

    def _build(self, index: int, epoch: int) -> dict[str, Any]:
        if self.cache and self.deterministic:
            hit = self.cache.get(self.reader.identity(index))
            if hit is not None and {"image", *TARGET_KEYS} <= hit.keys():
                return {"image": hit["image"], **{k: hit[k] for k in TARGET_KEYS}, "repairs": {}}
        page = self.page(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        matrix = random_affine(rng, *page.size, page.polygons, page.ignore, self.config)  # page → output
        size = self.config.size
        out_image = color_jitter(warp(page.image, matrix @ page.to_page, size), rng, self.config.color_jitter)
        out_polygons, out_ignore = crop_labels(page.polygons, page.ignore, matrix, size, self.min_text_size)
        targets = make_targets(out_polygons, out_ignore, size, size, self.shrink_ratio, self.thresh_min, self.thresh_max)
        sample = {"image": out_image, **targets, "repairs": dict(page.repairs)}
        if self.cache and self.deterministic:
            self.cache.put(self.reader.identity(index), {"image": out_image, **targets})
        return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack fixed-size samples: ``images`` uint8 (B, 3, H, W) — normalised on the device — the masks uint8 and
    ``thresh_map`` float32 (B, H, W): 1.75 bytes a pixel of targets to stack, pin and copy instead of 4 floats'
    16; :func:`as_float` turns the masks into float32 on the device.

    Images keep the NHWC memory layout they were stacked in (channels_last strides): no copy here, and the
    layout the model runs fastest in.
    """
    import torch

    images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2)
    batch: dict[str, Any] = {"images": images}
    for key in TARGET_KEYS:
        batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
    skipped: Counter = Counter()
    repairs: Counter = Counter()
    for s in samples:
        skipped.update(s["skipped"])
        repairs.update(s["repairs"])
    batch["skipped"] = dict(skipped)
    batch["repairs"] = dict(repairs)
    return batch


def as_float(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its masks as float32 (done where the batch already is: on the device): what a loss receives."""
    return {**batch, **{key: batch[key].float() for key in MASK_KEYS if key in batch}}
