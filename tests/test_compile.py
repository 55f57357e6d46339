"""``train.compile``: the model's forward and the DB loss trace as single graphs (no graph breaks), so compiling
them costs no extra host round-trips; the step's non-finite skip runs on tensors only, so it needs none either."""

from __future__ import annotations

import pytest
import torch

from dbtk.models.builder import build_loss, build_model
from tests.test_train import tiny

dynamo = pytest.importorskip("torch._dynamo")


def batch(size: int = 64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shrink = (torch.rand(2, size, size, generator=generator) > 0.8).float()
    return {
        "images": torch.rand(2, 3, size, size, generator=generator),
        "shrink_map": shrink,
        "shrink_mask": torch.ones(2, size, size),
        "thresh_map": torch.rand(2, size, size, generator=generator),
        "thresh_mask": shrink,
    }


def graph_breaks(fn, *args) -> tuple[int, list[str]]:  # noqa: ANN001
    dynamo.reset()
    explained = dynamo.explain(fn)(*args)
    return explained.graph_break_count, [str(b.reason) for b in explained.break_reasons]


def test_the_model_and_the_db_loss_compile_without_graph_breaks() -> None:
    recipe = tiny()
    model = build_model(recipe.model).train()
    loss_fn = build_loss(recipe.loss)
    data = batch()

    def step(images: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_fn(model(images, return_all=True), targets)["loss"]

    count, reasons = graph_breaks(step, data["images"], data)
    assert count == 0, reasons
