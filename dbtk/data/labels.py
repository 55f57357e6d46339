"""The one label path: orientation, polygon repair and the keep/skip decision for a decoded sample.

Training (the dataset), validation, ``dbtk eval`` (with a checkpoint or ``--pred``) and ``dbtk clean-data`` all
call :func:`prepare`, so what clean-data reports is exactly what training repairs or skips and exactly what
evaluation scores. No polygon reaches shapely, the rasteriser or the metric without passing through it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from dbtk.data.polygons import DROPPED, Reason, repair_all
from dbtk.data.reader import RawSample

#: The reason a whole sample is skipped when it had labels and none of them survived reading and repair.
NO_VALID_POLYGONS = "no_valid_polygons"


@dataclass(frozen=True)
class Finding:
    """One change :func:`repair` made to one annotation (``index`` into ``RawSample.annotations``)."""

    reason: Reason
    index: int
    line: int | None

    @property
    def dropped(self) -> bool:
        return self.reason in DROPPED


@dataclass
class Labels:
    """What is left of a sample's annotations, in the page's display coordinates (clockwise float32): the decoded
    image's own, unless it was decoded reduced (``RawSample.decoded.to_page()`` maps its pixels)."""

    image: np.ndarray
    polygons: list[np.ndarray] = field(default_factory=list)
    ignore: list[bool] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # index of each kept polygon in RawSample.annotations
    findings: list[Finding] = field(default_factory=list)
    skip: str | None = None  # a reason code when the whole sample must not be used
    skip_detail: str = ""  # why, in words: "none of its 3 polygons is usable"

    @property
    def repairs(self) -> Counter:
        """Counts of every change by reason (the ``repaired_polygons`` of training and the report of clean-data)."""
        return Counter(f.reason.value for f in self.findings)


def prepare(sample: RawSample, exif: str, *, min_size: float = 0.0) -> Labels:
    """Orient ``sample``'s labels to its decoded pixels, repair each polygon against the image bounds and decide.

    A sample with labels of which nothing usable is left is marked ``skip = "no_valid_polygons"``: training on
    it would teach that its text is background, and scoring it would count its text as missed. That includes labels
    that could not be read at all (``RawSample.unreadable``, e.g. ICDAR lines that are not 8 numbers): an image
    whose every line failed is no more a page without text than one whose every polygon did. A sample without
    labels at all is kept (a page with no text is a valid negative example).
    """
    image = sample.decoded.image
    width, height = sample.decoded.size  # the page's, at full resolution, whatever the pixels were decoded at
    labels = Labels(image)
    annotations = sample.annotations
    repaired = repair_all(sample.display_points(exif), width, height, ignore=[a.ignore for a in annotations], min_size=min_size)
    for index, (annotation, fixed) in enumerate(zip(annotations, repaired, strict=True)):
        if fixed.reasons:
            labels.findings.extend(Finding(reason, index, annotation.line) for reason in fixed.reasons)
        if fixed.points is not None:
            labels.polygons.append(fixed.points)
            labels.ignore.append(fixed.ignore)
            labels.texts.append(annotation.text)
            labels.kept.append(index)
    if (sample.annotations or sample.unreadable) and not labels.polygons:
        labels.skip = NO_VALID_POLYGONS
        labels.skip_detail = _nothing_usable(len(annotations), sample.unreadable)
    return labels


def _nothing_usable(polygons: int, unreadable: int) -> str:
    """Why a skipped sample had nothing to learn from, in its own counts (the same words in every report)."""
    read = f"none of its {polygons} polygons is usable" if polygons else ""
    lines = f"none of its {unreadable} label lines could be read" if unreadable and not polygons else ""
    also = f" ({unreadable} more label lines could not be read)" if unreadable and polygons else ""
    return (read or lines) + also
