"""Hostile image files: training skips and counts them, eval and predict report them, nothing crashes."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dbtk import recipe as recipes
from tests.data_fixtures import GOOD_LINE, jpeg_bytes, text_image, write_icdar
from tests.reliability.conftest import TALLY, run_cli


def _png(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    assert ok
    return buffer.tobytes()


def _bomb_header() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(text_image(64, 48)[..., ::-1].copy()).convert("CMYK").save(buffer, format="JPEG")
    return buffer.getvalue()


#: name -> (bytes, usable?)
HOSTILE = {
    "zero.jpg": (b"", False),
    "truncated.jpg": (jpeg_bytes(text_image(64, 48))[:300], False),
    "png_named.jpg": (_png(text_image(64, 48)), True),
    "jpeg_named.png": (jpeg_bytes(text_image(64, 48)), True),
    "tiny.png": (_png(np.full((1, 1, 3), 128, np.uint8)), False),  # its label lies outside: no usable polygon
    "bomb.png": (_bomb_header(), False),
    "cmyk.jpg": (_cmyk_jpeg(), True),
    "sixteen.png": (_png((text_image(64, 48).astype(np.uint16) * 257)), True),
    "gray.png": (_png(cv2.cvtColor(text_image(64, 48), cv2.COLOR_BGR2GRAY)), True),
    "alpha.png": (_png(cv2.cvtColor(text_image(64, 48), cv2.COLOR_BGR2BGRA)), True),
    "text.png": (b"just some text, not an image\n" * 4, False),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    items = {name: (data, GOOD_LINE + "\n") for name, (data, _) in HOSTILE.items()}
    items["good.jpg"] = (jpeg_bytes(text_image(64, 48)), GOOD_LINE + "\n")
    return write_icdar(tmp_path_factory.mktemp("hostile"), items)


def test_training_skips_and_counts_bad_images(hostile: Path, tmp_path: Path) -> None:
    from dbtk.engine.trainer import Trainer

    recipe = recipes.loads(
        f'[model.decoder]\nchannels = 16\n[data]\ntrain = "{hostile}"\nimage_size = 64\n'
        "[train]\nmax_steps = 6\nbatch_size = 4\nworkers = 0\nlog_every = 1\nval_every = 0\nprecision = 'fp32'\n"
        "[[loggers]]\nname = 'jsonl'\n"
    )
    trainer = Trainer(recipe, tmp_path / "run")
    trainer.run()
    TALLY["hostile images (training)"] += len(HOSTILE)
    assert trainer.position.step == 6
    for reason in ("empty", "truncated", "too_large", "corrupt", "no_valid_polygons"):
        assert trainer.state.skipped[reason] > 0, (reason, trainer.state.skipped)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["skipped_samples"] == sum(trainer.state.skipped.values()) > 0


def test_eval_and_predict_report_bad_images(hostile: Path, tmp_path: Path) -> None:
    import torch

    from dbtk.io.checkpoint import save_weights
    from dbtk.models.builder import build_model

    recipe = recipes.loads("[model.decoder]\nchannels = 16\n[eval]\nlong_side = 64\n")
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.safetensors"
    save_weights(checkpoint, build_model(recipe.model), recipe)

    result = run_cli(["eval", str(checkpoint), "--data", str(hostile), "--json", "--device", "cpu"])
    TALLY["hostile images (eval, predict)"] += 2 * len(HOSTILE)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    unreadable = {Path(p["where"]).name for p in report["problems"]}
    # Evaluation skips exactly what training skips (tiny.png: its only label lies outside, nothing to score).
    assert unreadable == {name for name, (_, usable) in HOSTILE.items() if not usable}
    assert report["images"] == len(HOSTILE) + 1 - len(unreadable)

    predicted = run_cli(["predict", str(checkpoint), str(hostile / "images"), "--out", str(tmp_path / "pred"), "--device", "cpu"])
    assert predicted.code == 0 and "Traceback" not in predicted.stderr
    undecodable = unreadable - {"tiny.png"}  # predict reads no labels: tiny.png decodes fine
    assert f"({len(undecodable)} unreadable)" in predicted.stdout
    assert len(list((tmp_path / "pred").glob("*.json"))) == len(HOSTILE) + 1 - len(undecodable)
