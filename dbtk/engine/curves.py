"""``curves.png``: training loss and validation hmean over steps, drawn with OpenCV (no plotting dependency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WIDTH, HEIGHT, MARGIN = 900, 420, 60


def write_curves(history: list[dict[str, float]], path: Path) -> None:
    import cv2

    canvas = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    loss = [(h["step"], h["loss"]) for h in history if "loss" in h and np.isfinite(h["loss"])]
    hmean = [(h["step"], h["val/hmean"]) for h in history if "val/hmean" in h]
    steps = [s for s, _ in loss + hmean] or [0, 1]
    low, high = min(steps), max(max(steps), min(steps) + 1)
    cv2.rectangle(canvas, (MARGIN, MARGIN // 2), (WIDTH - MARGIN, HEIGHT - MARGIN), (0, 0, 0), 1)

    def plot(points: list[tuple[float, float]], top: float, color: tuple[int, int, int]) -> None:
        if not points:
            return
        xs = [MARGIN + (s - low) / (high - low) * (WIDTH - 2 * MARGIN) for s, _ in points]
        ys = [HEIGHT - MARGIN - v / top * (HEIGHT - 1.5 * MARGIN) for _, v in points]
        line = np.round(np.stack([xs, ys], axis=1)).astype(np.int32)
        cv2.polylines(canvas, [line], False, color, 2, cv2.LINE_AA)
        for x, y in line[-1:]:
            cv2.circle(canvas, (int(x), int(y)), 3, color, -1)

    loss_top = max((v for _, v in loss), default=1.0) or 1.0
    plot(loss, loss_top * 1.05, (200, 80, 0))
    plot(hmean, 1.0, (0, 150, 0))
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, f"loss (max {loss_top:.3f})", (MARGIN, 20), font, 0.5, (200, 80, 0), 1, cv2.LINE_AA)
    best = max((v for _, v in hmean), default=None)
    if best is not None:
        cv2.putText(canvas, f"val hmean (0-1, best {best:.4f})", (MARGIN + 260, 20), font, 0.5, (0, 150, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, f"step {low}", (MARGIN, HEIGHT - MARGIN + 20), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, f"step {high}", (WIDTH - MARGIN - 80, HEIGHT - MARGIN + 20), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), canvas)
