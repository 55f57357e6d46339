"""ICDAR2015 detection metric (the IoU protocol of the ICDAR2015 robust-reading evaluator, as used by DBNet).

Per image:
1. Polygons that are not valid and simple (shapely) are left out, on both sides, as the reference does.
2. A detection whose area lies more than 50% inside a don't-care (``###``) region is ignored.
3. Care detections and care ground truths are matched one-to-one, greedily in (ground truth, detection) order,
   when their IoU exceeds 0.5.
Precision, recall and hmean are micro-averaged over the set: matched / care detections, matched / care
ground truths.

All geometry is shapely 2 vectorised: candidate pairs come from an STRtree query, and intersections and areas
are computed for all pairs of an image in one call each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLD = 0.5
DONT_CARE_OVERLAP = 0.5


@dataclass
class ImageScore:
    """Counts and matches for one image; indices refer to the polygons as passed in."""

    name: str = ""
    gt_care: int = 0
    det_care: int = 0
    matched: int = 0
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (gt index, det index)
    missed: list[int] = field(default_factory=list)  # care ground truths without a match
    false_positives: list[int] = field(default_factory=list)  # care detections without a match

    @property
    def precision(self) -> float:
        return self.matched / self.det_care if self.det_care else float(self.gt_care == 0)

    @property
    def recall(self) -> float:
        return self.matched / self.gt_care if self.gt_care else 1.0

    @property
    def hmean(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def _polygons(points: Sequence[np.ndarray]):  # noqa: ANN202 - array of shapely Polygons
    import shapely

    if not points:
        return np.empty(0, dtype=object)
    return np.array([shapely.Polygon(np.asarray(p, dtype=np.float64).reshape(-1, 2)) for p in points], dtype=object)


def _usable(polygons: np.ndarray) -> np.ndarray:
    import shapely

    if not len(polygons):
        return np.zeros(0, dtype=bool)
    return shapely.is_valid(polygons) & shapely.is_simple(polygons)


def evaluate_image(
    gt_points: Sequence[np.ndarray],
    gt_ignore: Sequence[bool],
    det_points: Sequence[np.ndarray],
    name: str = "",
) -> ImageScore:
    """Score one image's detections against its ground truth."""
    import shapely

    gts, dets = _polygons(gt_points), _polygons(det_points)
    gt_ok, det_ok = _usable(gts), _usable(dets)
    gt_index = np.flatnonzero(gt_ok)
    det_index = np.flatnonzero(det_ok)
    gts, dets = gts[gt_index], dets[det_index]
    dont_care = np.asarray(gt_ignore, dtype=bool)[gt_index] if len(gt_index) else np.zeros(0, dtype=bool)

    det_ignored = np.zeros(len(dets), dtype=bool)
    pairs_gt = pairs_det = np.zeros(0, dtype=np.int64)
    iou = np.zeros(0)
    if len(gts) and len(dets):
        tree = shapely.STRtree(dets)
        pairs_gt, pairs_det = tree.query(gts, predicate="intersects")
        inter = shapely.area(shapely.intersection(gts[pairs_gt], dets[pairs_det]))
        gt_area, det_area = shapely.area(gts), shapely.area(dets)
        union = gt_area[pairs_gt] + det_area[pairs_det] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        on_dont_care = dont_care[pairs_gt]
        overlap = np.divide(inter, det_area[pairs_det], out=np.zeros_like(inter), where=det_area[pairs_det] > 0)
        det_ignored[pairs_det[on_dont_care & (overlap > DONT_CARE_OVERLAP)]] = True

    score = ImageScore(name, gt_care=int((~dont_care).sum()), det_care=int((~det_ignored).sum()))
    candidates = (iou > IOU_THRESHOLD) & ~dont_care[pairs_gt] & ~det_ignored[pairs_det] if len(iou) else np.zeros(0, bool)
    order = np.lexsort((pairs_det[candidates], pairs_gt[candidates]))  # the reference's (gt, det) loop order
    gt_taken = np.zeros(len(gts), dtype=bool)
    det_taken = np.zeros(len(dets), dtype=bool)
    for g, d in zip(pairs_gt[candidates][order].tolist(), pairs_det[candidates][order].tolist(), strict=True):
        if not gt_taken[g] and not det_taken[d]:
            gt_taken[g] = det_taken[d] = True
            score.pairs.append((int(gt_index[g]), int(det_index[d])))
    score.matched = len(score.pairs)
    score.missed = [int(gt_index[g]) for g in np.flatnonzero(~gt_taken & ~dont_care)]
    score.false_positives = [int(det_index[d]) for d in np.flatnonzero(~det_taken & ~det_ignored)]
    return score


@dataclass(frozen=True)
class Summary:
    precision: float
    recall: float
    hmean: float
    matched: int
    gt_care: int
    det_care: int
    images: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "precision": self.precision, "recall": self.recall, "hmean": self.hmean, "matched": self.matched,
            "gt_care": self.gt_care, "det_care": self.det_care, "images": self.images,
        }


def summarize(scores: Iterable[ImageScore]) -> Summary:
    """Micro-average over the set (ICDAR2015 'method' metrics)."""
    scores = list(scores)
    matched = sum(s.matched for s in scores)
    gt_care = sum(s.gt_care for s in scores)
    det_care = sum(s.det_care for s in scores)
    recall = matched / gt_care if gt_care else 0.0
    precision = matched / det_care if det_care else 0.0
    hmean = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Summary(precision, recall, hmean, matched, gt_care, det_care, len(scores))
