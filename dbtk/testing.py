"""Plugin kit: contract checks a plugin author calls from their own tests.

.. code-block:: python

    from dbtk.testing import check_decoder

    def test_my_decoder():
        check_decoder(MyDecoder, channels=128)

Each ``check_*`` builds the component the way dbtk does (recipe keyword arguments, checked against the signature,
plus the arguments dbtk provides such as ``in_channels``), runs it the way the trainer does (train mode, bf16
autocast on CPU, backward, no host synchronisation) and raises :class:`PluginContractError` naming the rule that
broke. The checks run on CPU in seconds; they import torch only when called.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Tensor methods that wait for the device; none may run inside a training step.
HOST_SYNCS = ("item", "cpu", "tolist", "numpy", "__bool__")


class PluginContractError(AssertionError):
    """A component breaks dbtk's plugin contract; the message names the component, the rule and the fix."""


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Make every host-synchronising tensor method raise inside the block.

    A step that calls ``.item()`` or branches on a tensor (``if loss > 0``) stalls the GPU every iteration;
    dbtk's loop has none, and components must not add one.
    """
    import torch

    def forbidden(name: str) -> Callable[..., Any]:
        def fail(*_args: Any, **_kwargs: Any) -> Any:
            raise PluginContractError(
                f"Tensor.{name}() inside the training step waits for the device on every step; keep values as tensors "
                "(torch.where, clamp, masks) and let dbtk's loggers read them every N steps"
            )

        return fail

    saved = {name: getattr(torch.Tensor, name) for name in HOST_SYNCS}
    try:
        for name in HOST_SYNCS:
            setattr(torch.Tensor, name, forbidden(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def build(factory: Callable[..., Any], kind: str, params: Mapping[str, Any], **provided: Any) -> Any:
    """Construct a component as the registry does: recipe parameters checked against the signature, each a value
    a TOML recipe can hold, plus the arguments dbtk provides itself."""
    from dbtk.registry import RegistryError, check_params

    for key, value in params.items():
        _require_toml_value(kind, key, value)
    try:
        check_params(factory, params, kind=kind, name=_name(factory), provided=provided)
    except RegistryError as exc:
        raise PluginContractError(f"{kind} {_name(factory)}: {exc.message}") from None
    _require_toml_defaults(factory, kind, set(provided))
    try:
        return factory(**params, **provided)
    except TypeError as exc:
        raise PluginContractError(
            f"{kind} {_name(factory)} cannot be built from keyword arguments {sorted([*params, *provided])}: {exc}"
        ) from exc


def check_encoder(factory: Callable[..., Any], *, size: tuple[int, int] = (96, 160), **params: Any) -> Any:
    """An encoder reports ``channels`` and ``strides`` (finest first, the first at stride 4) and returns one
    N×C×H/s×W/s map per level, trainable under bf16 autocast without host syncs. Returns the built encoder."""
    import torch

    encoder = build(factory, "encoder", params)
    label = f"encoder {_name(factory)}"
    channels, strides = list(getattr(encoder, "channels", []) or []), list(getattr(encoder, "strides", []) or [])
    _expect(channels and len(channels) == len(strides), f"{label} must expose equal-length 'channels' and 'strides' lists, got {channels} and {strides}")
    _expect(strides[0] == 4, f"{label}: the DB head upsamples by 4, so the first level must have stride 4, got {strides[0]}")
    height, width = size
    images = torch.randn(2, 3, height, width)
    encoder.train()
    with no_host_sync(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = encoder(images)
    _expect(isinstance(features, (list, tuple)) and len(features) == len(channels),
            f"{label} must return a list of {len(channels)} feature maps, got {type(features).__name__}")
    for level, (feature, c, s) in enumerate(zip(features, channels, strides, strict=True)):
        expected = (2, c, height // s, width // s)
        _expect(tuple(feature.shape) == expected, f"{label}: level {level} has shape {tuple(feature.shape)}, expected {expected} from channels/strides")
    _backward_reaches_parameters(label, sum(f.float().mean() for f in features), encoder)
    return encoder


def check_decoder(
    factory: Callable[..., Any],
    *,
    encoder_channels: Sequence[int] = (64, 128, 256, 512),
    strides: Sequence[int] = (4, 8, 16, 32),
    size: tuple[int, int] = (96, 160),
    **params: Any,
) -> Any:
    """A decoder takes ``in_channels`` (one per encoder level), exposes ``out_channels`` and fuses the levels into
    one N×out_channels×H/4×W/4 map; every level and every parameter receives gradient (an unused parameter breaks
    DistributedDataParallel). Returns the built decoder."""
    import torch

    decoder = build(factory, "decoder", params, in_channels=list(encoder_channels))
    label = f"decoder {_name(factory)}"
    out_channels = getattr(decoder, "out_channels", None)
    _expect(isinstance(out_channels, int) and out_channels > 0, f"{label} must set an integer 'out_channels' attribute (the head's in_channels), got {out_channels!r}")
    height, width = size
    features = [torch.randn(2, c, height // s, width // s, requires_grad=True) for c, s in zip(encoder_channels, strides, strict=True)]
    decoder.train()
    with no_host_sync(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused = decoder(features)
    expected = (2, out_channels, height // strides[0], width // strides[0])
    _expect(isinstance(fused, torch.Tensor) and tuple(fused.shape) == expected,
            f"{label} must return one tensor of shape {expected}, got {getattr(fused, 'shape', type(fused).__name__)}")
    _expect(bool(torch.isfinite(fused).all()), f"{label} produced non-finite values under bf16 autocast")
    _backward_reaches_parameters(label, fused.float().square().mean(), decoder)
    for level, feature in enumerate(features):
        _expect(feature.grad is not None and bool(feature.grad.abs().sum() > 0), f"{label} ignores encoder level {level}: it receives no gradient")
    decoder.eval()
    with torch.no_grad():
        _expect(torch.equal(decoder(features), decoder(features)), f"{label} is not deterministic in eval mode (dropout or randomness left on?)")
    return decoder


def check_head(factory: Callable[..., Any], *, in_channels: int = 64, size: tuple[int, int] = (24, 40), **params: Any) -> Any:
    """A head maps N×C×h×w to full-resolution (4h × 4w) maps: ``logits`` and ``prob`` always, ``thresh`` and
    ``binary`` (float32, in [0, 1]) with ``return_all=True``. Returns the built head."""
    import torch

    head = build(factory, "head", params, in_channels=in_channels)
    label = f"head {_name(factory)}"
    h, w = size
    features = torch.randn(2, in_channels, h, w)
    head.train()
    with no_host_sync(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(features, return_all=True)
    _expect(isinstance(out, Mapping), f"{label} must return a dict of maps, got {type(out).__name__}")
    for key in ("logits", "prob", "thresh", "binary"):
        _expect(key in out, f"{label} with return_all=True must return '{key}' (got {sorted(out)})")
        _expect(tuple(out[key].shape) == (2, 1, 4 * h, 4 * w), f"{label}: '{key}' has shape {tuple(out[key].shape)}, expected {(2, 1, 4 * h, 4 * w)}")
    _expect(out["binary"].dtype == torch.float32, f"{label}: 'binary' must be computed in float32 (got {out['binary'].dtype}); sigmoid(k·(P−T)) in bf16 loses the threshold")
    for key in ("prob", "thresh", "binary"):
        _expect(bool(((out[key] >= 0) & (out[key] <= 1)).all()), f"{label}: '{key}' must be a probability in [0, 1]")
    _backward_reaches_parameters(label, sum(out[k].float().mean() for k in ("logits", "thresh", "binary")), head)
    head.eval()
    with torch.no_grad():
        light = head(features, return_all=False)
    _expect("prob" in light and "logits" in light, f"{label} with return_all=False must still return 'prob' and 'logits'")
    return head


def check_loss(factory: Callable[..., Any], *, size: tuple[int, int] = (64, 64), **params: Any) -> Any:
    """A loss takes the head's outputs and the batch targets and returns a dict with a scalar float32 ``loss``
    (optionally parts such as ``prob``); it stays finite on pages without text and on extreme logits, and runs in
    float32 under autocast without host syncs. Returns the built loss."""
    import torch

    loss_fn = build(factory, "loss", params)
    label = f"loss {_name(factory)}"
    for case, logit_scale, with_text in (("typical", 3.0, True), ("no text", 3.0, False), ("extreme logits ±1e4", 1e4, True)):
        outputs, targets, logits = _loss_inputs(size, logit_scale, with_text)
        with no_host_sync(), torch.autocast("cpu", dtype=torch.bfloat16):
            losses = loss_fn(outputs, targets)
            _expect(isinstance(losses, Mapping) and "loss" in losses, f"{label} must return a dict with a 'loss' entry")
            loss = losses["loss"]
            _expect(loss.dim() == 0, f"{label}: 'loss' must be a scalar, got shape {tuple(loss.shape)}")
            _expect(loss.dtype == torch.float32, f"{label}: 'loss' is {loss.dtype} under autocast; compute losses in float32 (torch.autocast(..., enabled=False) and .float())")
            loss.backward()
        _expect(math.isfinite(float(loss.detach())), f"{label} is not finite on the '{case}' case")
        _expect(logits.grad is not None and bool(torch.isfinite(logits.grad).all()), f"{label}: gradients are missing or not finite on the '{case}' case")
    return loss_fn


def check_logger(factory: Callable[..., Any], run_dir: str | Path, **params: Any) -> Any:
    """A logger is built with ``run_dir``, then ``start(info)``, ``log(step, metrics)`` for increasing steps, and
    ``close()`` (called again after a failure, so it must be idempotent); a resumed run starts a new instance with
    ``info['start_step']`` and logs from there. Metrics may be NaN (a skipped step). Returns the last logger."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    label = f"logger {_name(factory)}"
    first = build(factory, "logger", params, run_dir=run_dir)
    for method in ("start", "log", "close"):
        _expect(callable(getattr(first, method, None)), f"{label} must define {method}()")
    info = {"recipe": 'name = "check"\n', "total_steps": 6, "start_step": 0}
    _during(label, "start(info)", "", lambda: first.start(info))
    for step in (1, 2, 3, 4):
        _during(label, "log(step, metrics)", "", lambda step=step: first.log(step, {"loss": 1.0 / step, "lr": 1e-3, "bad_steps": 0.0}))
    _during(label, "log() of validation metrics at the same step", "validation shares the step it follows",
            lambda: first.log(4, {"val/hmean": 0.5, "elapsed_seconds": 1.0}))
    _during(label, "log() of a NaN loss", "a skipped step logs its non-finite loss; metrics may be NaN",
            lambda: first.log(5, {"loss": float("nan"), "lr": 1e-3, "bad_steps": 1.0}))
    _during(label, "close()", "", first.close)
    _during(label, "a second close()", "close() must be idempotent: dbtk closes loggers again after a failure", first.close)
    resumed = build(factory, "logger", params, run_dir=run_dir)
    _during(label, "start() on resume", "a resumed run starts a new logger with info['start_step']",
            lambda: resumed.start({**info, "start_step": 3}))
    for step in (4, 5, 6):
        _during(label, "log() after resume", "", lambda step=step: resumed.log(step, {"loss": 0.1, "lr": 1e-4, "bad_steps": 0.0}))
    _during(label, "close() after resume", "", resumed.close)
    return resumed


def check_reader(factory: Callable[..., Any], split: Any, *, samples: int = 3, **params: Any) -> Any:
    """A dataset reader (``dbtk.datasets``) is built with ``split`` (a :class:`dbtk.recipe.Split`), indexes it when
    constructed, and meets :class:`dbtk.data.reader.Reader` so that training, validation, ``dbtk eval`` and
    ``dbtk clean-data`` all work with it: ``exif`` is "stored" or "display", ``problems`` a list of
    :class:`dbtk.data.reader.Problem`, ``name``/``identity`` stable strings (identities distinct per sample),
    ``source`` an existing file or None, and ``load(i)`` a :class:`dbtk.data.reader.RawSample` with a uint8 RGB
    H×W×3 image and (N, 2) finite-or-not points (repair is dbtk's job, see :func:`dbtk.data.labels.prepare`).
    The first ``samples`` samples are loaded and sent through the one label path; a reader whose ``load`` takes
    ``draw`` is asked for each one drawn small too, and must describe the same page with ceil(size / reduction)
    pixels. Returns the reader."""
    import numpy as np

    from dbtk.data.images import DrawScale, ImageError
    from dbtk.data.labels import prepare
    from dbtk.data.reader import EXIF_FRAMES, Problem, RawSample, Reader, takes_draw

    label = f"reader {_name(factory)}"
    reader = build(factory, "dataset", params, split=split)
    missing = [m for m in ("__len__", "name", "load", "identity", "source") if not callable(getattr(reader, m, None))]
    _expect(not missing, f"{label} must define {', '.join(missing)} (see dbtk.data.reader.Reader)")
    _expect(isinstance(reader, Reader), f"{label} must have the attributes exif and problems (see dbtk.data.reader.Reader)")
    _expect(reader.exif in EXIF_FRAMES, f"{label}: exif must be one of {EXIF_FRAMES}, got {reader.exif!r}")
    _expect(isinstance(reader.problems, list) and all(isinstance(p, Problem) for p in reader.problems),
            f"{label}: problems must be a list of dbtk.data.reader.Problem (collected while indexing, never raised)")
    count = len(reader)
    _expect(isinstance(count, int) and count > 0, f"{label}: the split it was given must not be empty (len() = {count!r})")
    identities = set()
    for index in range(min(samples, count)):
        name, identity = reader.name(index), reader.identity(index)
        _expect(isinstance(name, str) and name, f"{label}: name({index}) must be a non-empty string")
        _expect(isinstance(identity, str) and identity == reader.identity(index), f"{label}: identity({index}) must be a stable string (it keys the sample cache)")
        identities.add(identity)
        source = reader.source(index)
        _expect(source is None or Path(source).is_file(), f"{label}: source({index}) must be the image file or None, got {source!r}")
        try:
            sample = reader.load(index)
        except ImageError:
            continue  # an unusable image is the reader's to report this way: it is counted and skipped
        _expect(isinstance(sample, RawSample), f"{label}: load({index}) must return a dbtk.data.reader.RawSample")
        image = sample.decoded.image
        _expect(isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3,
                f"{label}: load({index}).decoded.image must be uint8 RGB H×W×3")
        _expect(sample.decoded.consistent(), f"{label}: load({index}).decoded must describe its pixels: reduction a "
                f"positive integer, ceil(stored_size / reduction) pixels when reduced (see dbtk.data.images.Decoded)")
        for annotation in sample.annotations:
            points = np.asarray(annotation.points)
            _expect(points.ndim == 2 and points.shape[1] == 2, f"{label}: annotation points must be (N, 2), got {points.shape}")
        _during(label, f"the label path on sample {index}", "labels must be usable by dbtk.data.labels.prepare",
                lambda sample=sample: prepare(sample, reader.exif))
        if takes_draw(reader):  # asked for a page drawn small, it may decode fewer pixels, and must say so
            small = reader.load(index, draw=DrawScale(0.01)).decoded
            _expect(small.consistent() and small.size == sample.decoded.size,
                    f"{label}: load({index}, draw=...) must return the same page (Decoded.size) with ceil(size / "
                    f"reduction) pixels, got {small.image.shape[1::-1]} pixels, stored_size {small.stored_size!r}, "
                    f"reduction {small.reduction!r}")
    _expect(len(identities) == min(samples, count), f"{label}: identity() must differ between samples")
    return reader


# ------------------------------------------------------------------------------------------------ helpers
def _loss_inputs(size: tuple[int, int], logit_scale: float, with_text: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    import torch

    generator = torch.Generator().manual_seed(0)
    h, w = size
    logits = (torch.randn(2, 1, h, w, generator=generator) * logit_scale).requires_grad_(True)
    thresh = torch.rand(2, 1, h, w, generator=generator)
    gt = torch.zeros(2, h, w)
    if with_text:
        gt[:, h // 4 : h // 4 + 6, w // 8 : w - w // 8] = 1
    outputs = {
        "logits": logits.bfloat16(),
        "prob": torch.sigmoid(logits).bfloat16(),
        "thresh": thresh,
        "binary": torch.sigmoid(50 * (torch.sigmoid(logits) - thresh)),
    }
    targets = {
        "shrink_map": gt,
        "shrink_mask": torch.ones(2, h, w),
        "thresh_map": torch.full((2, h, w), 0.3) + 0.4 * gt,
        "thresh_mask": (gt > 0).float(),
    }
    return outputs, targets, logits


def _backward_reaches_parameters(label: str, scalar: torch.Tensor, module: torch.nn.Module) -> None:
    import torch

    with no_host_sync():
        scalar.backward()
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        _expect(parameter.grad is not None, f"{label}: parameter '{name}' receives no gradient (unused parameters break DistributedDataParallel)")
        _expect(bool(torch.isfinite(parameter.grad).all()), f"{label}: parameter '{name}' has non-finite gradients")


def _require_toml_value(kind: str, key: str, value: Any) -> None:
    if isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list | tuple):
        for item in value:
            _require_toml_value(kind, key, item)
        return
    if isinstance(value, Mapping):
        for item in value.values():
            _require_toml_value(kind, key, item)
        return
    raise PluginContractError(f"{kind} parameter '{key}' = {value!r}: recipes hold TOML values only (str, int, float, bool, lists, tables)")


def _require_toml_defaults(factory: Callable[..., Any], kind: str, provided: set[str]) -> None:
    """Defaults appear in ``dbtk recipe`` output and docs; each must be a TOML value (None means 'unset')."""
    import inspect

    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return
    for parameter in parameters:
        if parameter.name in provided or parameter.default in (inspect.Parameter.empty, None):
            continue
        try:
            _require_toml_value(kind, parameter.name, parameter.default)
        except PluginContractError:
            raise PluginContractError(
                f"{kind} {_name(factory)}: default {parameter.name} = {parameter.default!r} is not a TOML value; recipes could never set it back"
            ) from None


def _during(label: str, action: str, rule: str, call: Callable[[], Any]) -> None:
    """Run one contract step; an exception becomes a failure that says which step and which rule."""
    try:
        call()
    except PluginContractError:
        raise
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise PluginContractError(f"{label}: {action} raised {type(exc).__name__}: {first_line}" + (f" ({rule})" if rule else "")) from exc


def _expect(condition: Any, message: str) -> None:
    if not condition:
        raise PluginContractError(message)


def _name(factory: Callable[..., Any]) -> str:
    return f"'{getattr(factory, '__qualname__', factory)}'"
