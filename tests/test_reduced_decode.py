"""Pages drawn at half their size or less are decoded reduced (libjpeg's DCT scaling): the reduction is the
largest that still leaves a decoded pixel per drawn pixel, the reduced pixels sit where the page's labels say
(every EXIF orientation, sizes that are not multiples of the reduction), and training samples are the full-decode
ones but for resampling — the targets bit for bit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbtk import recipe as recipes
from dbtk.data.dataset import DetectionDataset
from dbtk.data.formats import ICDAR2015
from dbtk.data.images import JPEG_REDUCTIONS, DrawScale, ImageError, decode_image
from tests.data_fixtures import jpeg_bytes, write_icdar


def _texture(width: int, height: int, blur: float, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture (BGR): features a few pixels across, for sub-pixel alignment checks."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), blur)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 235 + 10).astype(np.uint8)


@settings(max_examples=300, deadline=None)
@given(
    most=st.floats(0.01, 4.0), fit=st.one_of(st.none(), st.integers(16, 4096)),
    width=st.integers(1, 20000), height=st.integers(1, 20000),
)
def test_the_reduction_is_the_largest_that_keeps_a_pixel_per_drawn_pixel(most: float, fit: int | None, width: int, height: int) -> None:
    scale = most * (fit / max(width, height) if fit else 1.0)
    n = DrawScale(most, fit).reduction(width, height)
    assert n in (1, *JPEG_REDUCTIONS)
    assert n == 1 or n * scale <= 1.0  # a reduced page never has fewer pixels than are drawn from it
    assert n == max(JPEG_REDUCTIONS) or 2 * n * scale > 1.0  # and no larger reduction would do


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_reduced_jpeg_has_ceil_sized_pixels_and_the_full_pages_frame(orientation: int) -> None:
    data = jpeg_bytes(_texture(203, 151, 2.0), orientation)
    full = decode_image(data)
    assert full.reduction == 1 and full.image.shape[1::-1] == full.size
    for n in JPEG_REDUCTIONS:
        reduced = decode_image(data, draw=DrawScale(1.0 / n))
        assert reduced.reduction == n and reduced.size == full.size and reduced.orientation == orientation
        stored = (-(-203 // n), -(-151 // n))
        assert reduced.image.shape[1::-1] == (stored if orientation < 5 else stored[::-1])
    assert decode_image(data, draw=DrawScale(0.51)).reduction == 1  # drawn at more than half: full pixels


def test_only_jpegs_are_reduced() -> None:
    image = _texture(203, 151, 2.0)
    png = cv2.imencode(".png", image)[1].tobytes()
    decoded = decode_image(png, draw=DrawScale(0.1))
    assert decoded.reduction == 1 and decoded.image.shape == (151, 203, 3)
    np.testing.assert_array_equal(decoded.to_page(), np.eye(3))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("n", JPEG_REDUCTIONS)
def test_reduced_pixels_sit_where_the_page_says(orientation: int, n: int) -> None:
    """Map the reduced pixels back onto the full page through ``to_page``: they match the full decode (blurred
    alike) better than the same map moved half a page pixel either way along either axis. A map off by
    (N − 1)/2, or by a reduced pixel (a flip about the wrong size), fails by far."""
    width, height = 8 * 37 + 5, 8 * 29 + 3  # not multiples of any reduction
    data = jpeg_bytes(_texture(width, height, 1.2 * n, seed=n + orientation), orientation)
    full = decode_image(data)
    reduced = decode_image(data, draw=DrawScale(1.0 / n))
    assert reduced.reduction == n
    reference = cv2.GaussianBlur(full.image, (0, 0), n / 2).astype(np.float32)
    margin = 2 * n
    inner = (slice(margin, -margin), slice(margin, -margin))

    def error(dx: float, dy: float) -> float:
        to_page = reduced.to_page() + np.array([[0, 0, dx], [0, 0, dy], [0, 0, 0]])
        back = np.linalg.inv(to_page)[:2]
        drawn = cv2.warpAffine(reduced.image, back, full.size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        return float(np.abs(drawn.astype(np.float32) - reference)[inner].mean())

    aligned = error(0.0, 0.0)
    for dx, dy in ((0.5, 0.0), (-0.5, 0.0), (0.0, 0.5), (0.0, -0.5)):
        assert aligned < 0.85 * error(dx, dy), (dx, dy, aligned, error(dx, dy))


def _large_pages(root: Path) -> Path:
    """Two large JPEG pages (one EXIF-rotated) with dark 'text' boxes, labelled in stored coordinates."""
    items = {}
    for name, orientation, seed in (("a.jpg", None, 1), ("b.jpg", 6, 2)):
        image = _texture(1203, 901, 3.0, seed)
        boxes = [(80 + 260 * (i % 4), 90 + 150 * (i // 4), 280 + 260 * (i % 4), 150 + 150 * (i // 4)) for i in range(20)]
        lines = []
        for x0, y0, x1, y1 in boxes:
            image[y0:y1, x0:x1] //= 5
            lines.append(f"{x0},{y0},{x1},{y0},{x1},{y1},{x0},{y1},word")
        items[name] = (jpeg_bytes(image, orientation), "\n".join(lines) + "\n")
    return write_icdar(root, items)


class _FullOnly:
    """The same reader, as a plugin written before ``draw`` existed: ``load(i)`` only."""

    def __init__(self, reader: ICDAR2015) -> None:
        self.reader, self.exif, self.problems = reader, reader.exif, reader.problems

    def __len__(self) -> int:
        return len(self.reader)

    def name(self, index: int) -> str:
        return self.reader.name(index)

    def load(self, index: int):  # noqa: ANN201
        return self.reader.load(index)

    def identity(self, index: int) -> str:
        return self.reader.identity(index)

    def source(self, index: int) -> Path | None:
        return self.reader.source(index)


@pytest.mark.parametrize("mode", ["resize", "crop"])
def test_training_samples_from_reduced_pages_match_full_decodes(tmp_path: Path, mode: str) -> None:
    root = _large_pages(tmp_path / "pages")
    settings = ["data.image_size=256", "data.crop=0"] if mode == "resize" else ["data.crop=128", "data.scale_min=0.3", "data.scale_max=0.45"]
    recipe = recipes.with_overrides(recipes.Recipe(), [f"data.train={root}", "data.cache=off", "data.rotate=10", *settings])
    reader = ICDAR2015(recipes.Split(str(root)))
    reduced = DetectionDataset(reader, recipe.data, train=True, seed=3)
    full = DetectionDataset(_FullOnly(reader), recipe.data, train=True, seed=3)
    assert reduced.page(0).to_page[0, 0] == 2 and reduced.page(1).to_page[0, 0] == 2  # drawn at ≤ 0.45 of the page
    assert full.page(0).to_page[0, 0] == 1  # the old-style reader is called the plain way
    for index in range(8):
        a, b = reduced[index], full[index]
        for key in ("shrink_map", "shrink_mask", "thresh_map", "thresh_mask"):  # labels never left the page frame
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        difference = np.abs(a["image"].astype(np.int16) - b["image"].astype(np.int16))
        # Resampling differences only; pixels drawn without the reduced page's map (at twice the size) or with it
        # composed the wrong way round differ by tens of grey levels.
        assert difference.mean() < 2.5, difference.mean()


def test_a_warm_cache_serves_the_reduced_page_it_stored(tmp_path: Path) -> None:
    root = _large_pages(tmp_path / "pages")
    recipe = recipes.with_overrides(recipes.Recipe(), [f"data.train={root}", f"data.cache={tmp_path / 'cache'}",
                                                       "data.image_size=256", "data.crop=0", "data.rotate=10"])
    reader = ICDAR2015(recipes.Split(str(root)))
    cold = DetectionDataset(reader, recipe.data, train=True, seed=1)
    first = [cold[i] for i in range(4)]
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 2
    warm = DetectionDataset(reader, recipe.data, train=True, seed=1)
    page = warm.page(1)
    assert page.image.shape[:2] == (602, 451) and page.size == (901, 1203)  # EXIF 6: the page stands upright
    assert not page.repairs  # from the cache: counted when the entry was made
    for index, before in enumerate(first):
        after = warm[index]
        for key in ("image", "shrink_map", "shrink_mask", "thresh_map", "thresh_mask"):
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    # Another drawing scale is another entry: a page reduced for one recipe never serves another.
    larger = recipes.with_overrides(recipe, ["data.image_size=640"])
    DetectionDataset(reader, larger.data, train=True, seed=1)[0]
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_a_cache_entry_without_the_page_frame_is_a_miss(tmp_path: Path) -> None:
    root = _large_pages(tmp_path / "pages")
    recipe = recipes.with_overrides(recipes.Recipe(), [f"data.train={root}", f"data.cache={tmp_path / 'cache'}",
                                                       "data.image_size=256", "data.crop=0"])
    reader = ICDAR2015(recipes.Split(str(root)))
    dataset = DetectionDataset(reader, recipe.data, train=True, seed=1)
    expected = dataset[0]
    hit = dataset.cache.get(reader.identity(0))
    dataset.cache.put(reader.identity(0), {k: np.array(v) for k, v in hit.items() if k != "to_page"})
    again = DetectionDataset(reader, recipe.data, train=True, seed=1)[0]
    np.testing.assert_array_equal(again["image"], expected["image"])
    assert dataclasses.is_dataclass(reader.load(0).decoded)


def test_pixels_that_do_not_match_the_header_are_decoded_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that returns another size than the header says (or nothing) at a reduction: the page is decoded
    in full rather than drawn through a wrong map, or lost."""
    data = jpeg_bytes(_texture(203, 151, 2.0))
    real = cv2.imdecode
    for wrong in (lambda buffer: real(buffer, cv2.IMREAD_COLOR)[:-1], lambda buffer: None):
        reduced = cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION  # what a draw at 0.1 asks for
        monkeypatch.setattr(cv2, "imdecode", lambda buffer, flags, wrong=wrong: wrong(buffer) if flags == reduced else real(buffer, flags))
        decoded = decode_image(data, draw=DrawScale(0.1))
        assert decoded.reduction == 1 and decoded.image.shape == (151, 203, 3)


def _timed(load):  # noqa: ANN001, ANN202 - a decorator without functools.wraps: load shows (*args, **kwargs)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return load(*args, **kwargs)

    return wrapper


class _Decorated(ICDAR2015):
    @_timed
    def load(self, index):  # noqa: ANN001, ANN201 - written before draw existed
        return super().load(index)


class _OwnOptions(ICDAR2015):
    def load(self, index, **options):  # noqa: ANN001, ANN003, ANN201 - options of its own, never draw
        assert not options, options
        return super().load(index)


class _MisstatedReduction(ICDAR2015):
    def load(self, index, draw=None):  # noqa: ANN001, ANN201 - reduced pixels said to be full ones, or the reverse
        sample = super().load(index, draw=draw)
        wrong = 2 if sample.decoded.reduction == 1 else 1
        sample.decoded = dataclasses.replace(sample.decoded, reduction=wrong)
        return sample


@pytest.mark.parametrize("factory", [_Decorated, _OwnOptions])
def test_a_load_without_a_draw_parameter_is_called_plainly(tmp_path: Path, factory: type) -> None:
    root = _large_pages(tmp_path / "pages")
    recipe = recipes.with_overrides(recipes.Recipe(), [f"data.train={root}", "data.cache=off", "data.image_size=256", "data.crop=0"])
    dataset = DetectionDataset(factory(recipes.Split(str(root))), recipe.data, train=True, seed=0)
    sample = dataset[0]
    assert not sample["skipped"] and dataset.page(0).to_page[0, 0] == 1


def test_pixels_that_are_not_the_page_reduced_as_said_are_skipped(tmp_path: Path) -> None:
    root = _large_pages(tmp_path / "pages")
    recipe = recipes.with_overrides(recipes.Recipe(), [f"data.train={root}", "data.cache=off", "data.image_size=256", "data.crop=0"])
    reader = _MisstatedReduction(recipes.Split(str(root)))
    for draw in (None, DrawScale(0.25)):
        decoded = reader.load(0, draw=draw).decoded
        assert not decoded.consistent()
    with pytest.raises(Exception, match="16 samples in a row could not be loaded .last: bad_reduction"):
        DetectionDataset(reader, recipe.data, train=True, seed=0)[0]
    for reduction in (0, -2, 2.5, "2", None):
        assert not dataclasses.replace(decode_image(jpeg_bytes(_texture(40, 30, 2.0))), reduction=reduction).consistent()


def test_an_image_gone_since_indexing_is_skipped_with_the_cache_on(tmp_path: Path) -> None:
    root = _large_pages(tmp_path / "pages")
    recipe = recipes.with_overrides(recipes.Recipe(), [f"data.train={root}", f"data.cache={tmp_path / 'cache'}", "data.image_size=256", "data.crop=0"])
    reader = ICDAR2015(recipes.Split(str(root)))
    (root / "images" / "a.jpg").unlink()
    sample = DetectionDataset(reader, recipe.data, train=True, seed=0)[0]
    assert sample["skipped"] == {"unreadable": 1}


def test_fill_bytes_before_a_marker_hide_no_size() -> None:
    """0xFF fill bytes (and stray bytes, as libjpeg skips them) before a marker: the size is still read, so the
    page is still reduced and the decompression-bomb guard still applies."""
    data = jpeg_bytes(_texture(203, 151, 2.0))
    for junk in (b"\xff\xff\xff", b"\x00\x17"):
        at = data.index(b"\xff\xc0")
        padded = data[:at] + junk + data[at:]
        assert cv2.imdecode(np.frombuffer(padded, np.uint8), cv2.IMREAD_COLOR).shape == (151, 203, 3)
        assert decode_image(padded, draw=DrawScale(0.125)).reduction == 8
        with pytest.raises(ImageError, match="exceeds"):
            decode_image(padded, max_pixels=1000)
