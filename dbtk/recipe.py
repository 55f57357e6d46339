"""Typed TOML recipes: schema, loading, ``--set`` overrides, validation, paths, the resume check and dumping.

A recipe is plain data: component tables name registered components (see :mod:`dbtk.registry`), never import
paths. Files are parsed with tomllib (tomli before Python 3.11) and structured by cattrs into the attrs classes
below, with strict types, bounded ranges and error messages that carry the full key path, a suggestion and where
the key came from (the file or a ``--set`` item). Loading makes every path absolute (docs/recipes.md#paths).

Every field's ``help`` metadata is the documentation: docs/recipes.md is checked against it by a test.
This module must not import torch or any other heavy dependency.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import re
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import list_structure_factory
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)
from cattrs.gen import make_dict_structure_fn

from dbtk.errors import DbtkError, RecipeError

if TYPE_CHECKING:
    from dbtk.registry import Entry, Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


class FieldError(ValueError):
    """A value that has the right type but is not allowed; carries the field name for the key path, and the names
    of sibling fields the check compared it with (``related``: a ``--set`` of one of them is named as the source)."""

    def __init__(self, field_name: str, message: str, related: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.field_name = field_name
        self.related = related


# ---------------------------------------------------------------------------------------------- validators
#: Upper bounds that keep every size a recipe sets runnable (docs/recipes.md): an image side (training size, crop,
#: inference size; also ``dbtk models --size``), images in a batch, steps, loader processes.
MAX_SIDE = 8192
MAX_BATCH = 1024
MAX_STEPS = 100_000_000
MAX_WORKERS = 256


def _validator(check: Callable[[Any], bool], describe: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    def validate(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not check(value):
            raise FieldError(attribute.name, f"must be {describe}, got {value!r}")

    return validate


def at_least(low: float) -> Callable[[Any, attrs.Attribute, Any], None]:
    return _validator(lambda v: v >= low, f">= {low}")


def positive(high: float = math.inf) -> Callable[[Any, attrs.Attribute, Any], None]:
    if high == math.inf:
        return _validator(lambda v: v > 0 and math.isfinite(v), "> 0")
    return _validator(lambda v: 0 < v <= high, f"> 0 and at most {high}")


def between(low: float, high: float, *, inclusive: bool = True) -> Callable[[Any, attrs.Attribute, Any], None]:
    if inclusive:
        return _validator(lambda v: low <= v <= high, f"between {low} and {high}")
    return _validator(lambda v: low < v < high, f"strictly between {low} and {high}")


def one_of(*choices: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    return _validator(lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


def multiple_of(step: int, high: int, *, allow_zero: bool = False, low: int = 1) -> Callable[[Any, attrs.Attribute, Any], None]:
    zero = " (or 0)" if allow_zero else ""
    start = f"from {low} " if low > step else ""
    return _validator(
        lambda v: (allow_zero and v == 0) or (max(low, 1) <= v <= high and v % step == 0),
        f"a positive multiple of {step} {start}up to {high}{zero}",
    )


#: The smallest ``eval.tile``: smaller tiles hold little context (the network sees a tile's border as the page's
#: edge) and their count grows with the square of 1/tile — 64 px tiles make a 2000 × 1500 scan 1,500 forwards.
MIN_TILE = 128

#: "90s", "30m", "2h", "1h30m", "2d": a duration as people write it (ASCII digits, lower-case units: "30M" could
#: as well mean months).
_DURATION = re.compile(r"^(?:([0-9]+(?:\.[0-9]+)?)d)?(?:([0-9]+(?:\.[0-9]+)?)h)?(?:([0-9]+(?:\.[0-9]+)?)m)?(?:([0-9]+(?:\.[0-9]+)?)s)?$")
_UNIT_SECONDS = (86400.0, 3600.0, 60.0, 1.0)
#: Durations dbtk accepts for ``train.time_budget``: shorter cannot hold warm-up and one validation anywhere.
MIN_BUDGET, MAX_BUDGET = 10.0, 90 * 24 * 3600.0


def duration_seconds(text: str) -> float | None:
    """Seconds in ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"`` or ``"2d"``; None when ``text`` is not such a duration."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None or not any(match.groups()):
        return None
    return sum(float(g) * unit for g, unit in zip(match.groups(), _UNIT_SECONDS, strict=True) if g)


def a_duration() -> Callable[[Any, attrs.Attribute, Any], None]:
    def valid(text: str) -> bool:
        seconds = duration_seconds(text) if text else MIN_BUDGET
        return seconds is not None and MIN_BUDGET <= seconds <= MAX_BUDGET

    return _validator(valid, f'"" (no budget) or a duration like "90s", "30m", "2h", "1h30m" or "2d" between {MIN_BUDGET:g} s and 90 days')


def not_empty() -> Callable[[Any, attrs.Attribute, Any], None]:
    return _validator(lambda v: bool(v.strip()), "a non-empty string")


def a_folder_name() -> Callable[[Any, attrs.Attribute, Any], None]:
    """A run name becomes ``runs/NAME``: a separator or ``..`` would put the run (and its checkpoints) elsewhere."""
    return _validator(
        lambda v: bool(v.strip()) and v not in (".", "..") and not any(c in v for c in "/\\\0"),
        "a folder name (not empty, '.' or '..', without '/' or '\\')",
    )


#: Devices ``dbtk.io.device.resolve_device`` turns into a torch device; checked with the recipe, before torch loads.
DEVICES = re.compile(r"auto|cpu|mps|cuda(?::[0-9]{1,4})?")  # ASCII digits; an index torch.device can hold


def valid_device(name: str) -> bool:
    """Whether ``name`` is a device dbtk can train and run on (:data:`DEVICES`)."""
    return DEVICES.fullmatch(name) is not None


def a_device() -> Callable[[Any, attrs.Attribute, Any], None]:
    return _validator(valid_device, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def _field(default: Any, help: str, validator: Any = None, factory: bool = False) -> Any:
    metadata = {"help": help}
    if factory:
        return attrs.field(factory=default, validator=validator, metadata=metadata)
    return attrs.field(default=default, validator=validator, metadata=metadata)


# ---------------------------------------------------------------------------------------------- schema
@attrs.define
class Component:
    """A registered component: ``name`` picks it (``dist:name`` when two plugins clash), the rest are its kwargs."""

    name: str
    params: dict[str, Any] = attrs.field(factory=dict)

    def as_table(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


@attrs.define
class Split:
    """Where a data split lives: a folder, or images plus one annotation file (receipt JSON)."""

    images: str = attrs.field(
        validator=not_empty(), metadata={"help": "image folder (or dataset root for ICDAR2015: images/ + gts/)"}
    )
    annotations: str | None = _field(None, "annotation file, for formats that keep all labels in one file")


@attrs.define
class Model:
    encoder: Component = _field(
        lambda: Component("timm", {"arch": "resnet18", "pretrained": False}),
        "backbone: name of a registered encoder plus its parameters",
        factory=True,
    )
    decoder: Component = _field(
        lambda: Component("fpn", {"channels": 256}), "neck: registered decoder plus its parameters", factory=True
    )
    head: Component = _field(
        lambda: Component("db", {"k": 50}), "head: registered head plus its parameters", factory=True
    )


@attrs.define
class Data:
    format: Component = _field(
        lambda: Component("icdar2015"),
        "dataset reader: a registered name, or a table with name plus reader parameters",
        factory=True,
    )
    train: Split | None = _field(None, "training split: a folder, or {images = ..., annotations = ...}")
    val: Split | None = _field(None, "validation split, same form as train")
    image_size: int = _field(640, "training input side in pixels (LongestMaxSize + pad)", multiple_of(32, MAX_SIDE))
    crop: int = _field(
        0, "random crops of this side at native scale instead of resizing whole images (0 = off)",
        multiple_of(32, MAX_SIDE, allow_zero=True),
    )
    shrink_ratio: float = _field(0.4, "DB shrink ratio r of the probability-map kernels", between(0, 1, inclusive=False))
    thresh_min: float = _field(0.3, "threshold-map value far from text", between(0, 1))
    thresh_max: float = _field(0.7, "threshold-map value on text borders", between(0, 1))
    min_text_size: float = _field(3.0, "text shorter than this many pixels after augmentation becomes don't-care", between(0, MAX_SIDE))
    augment: bool = _field(True, "random scale, rotation, crop position and colour jitter for training")
    scale_min: float = _field(0.5, "smallest random scale (relative to LongestMaxSize, or to native size with crop)", positive(8.0))
    scale_max: float = _field(1.5, "largest random scale", positive(8.0))
    rotate: float = _field(10.0, "largest random rotation in degrees", between(0, 180))
    color_jitter: float = _field(0.3, "strength of brightness/contrast/saturation jitter (0 = off)", between(0, 1))
    cache: str = _field("off", "decoded-sample cache: 'off', 'auto' (user cache folder) or a folder path", not_empty())

    def __attrs_post_init__(self) -> None:
        if self.thresh_min >= self.thresh_max:
            raise FieldError("thresh_max", f"must be greater than thresh_min ({self.thresh_min}), got {self.thresh_max}", ("thresh_min",))
        if self.scale_min > self.scale_max:
            raise FieldError("scale_max", f"must be at least scale_min ({self.scale_min}), got {self.scale_max}", ("scale_min",))


@attrs.define
class Train:
    epochs: int = _field(100, "passes over the training set", between(1, 1_000_000))
    max_steps: int = _field(0, "stop after this many optimizer steps (0 = run all epochs)", between(0, MAX_STEPS))
    time_budget: str = _field("", 'wall time for the whole run, e.g. "30m" or "2h": with max_steps = 0, training measures its steps and fixes max_steps so that steps, validations and checkpoints end within it', a_duration())
    batch_size: int = _field(2, "images per forward pass, per process", between(1, MAX_BATCH))
    accumulate: int = _field(1, "forward passes per optimizer step (effective batch = batch_size x accumulate)", between(1, MAX_BATCH))
    precision: str = _field("bf16", "autocast precision: 'fp32', 'bf16' or 'fp16' (fp16 uses a GradScaler)", one_of("fp32", "bf16", "fp16"))
    optimizer: str = _field("adamw", "optimizer: 'adamw' or 'sgd'", one_of("adamw", "sgd"))
    lr: float = _field(1e-3, "peak learning rate", positive())
    weight_decay: float = _field(1e-4, "decoupled weight decay", at_least(0))
    grad_clip: float = _field(5.0, "clip the gradient norm to this value (0 = off)", at_least(0))
    scheduler: str = _field("poly", "learning-rate schedule after warmup: 'poly', 'cosine' or 'constant'", one_of("poly", "cosine", "constant"))
    warmup_steps: int = _field(0, "linear warmup steps", between(0, MAX_STEPS))
    workers: int = _field(4, "data-loader worker processes", between(0, MAX_WORKERS))
    device: str = _field("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'", a_device())
    val_every: int = _field(1, "validate every N epochs (0 = never)", between(0, 1_000_000))
    val_every_steps: int = _field(0, "also validate every N optimizer steps (0 = off)", between(0, MAX_STEPS))
    checkpoint_every: int = _field(500, "write checkpoints/last every N optimizer steps, besides each epoch end (0 = epoch ends only)", between(0, MAX_STEPS))
    log_every: int = _field(10, "log metrics every N optimizer steps (the only host syncs in the loop)", between(1, MAX_STEPS))
    max_bad_steps: int = _field(20, "stop after this many consecutive non-finite steps", between(1, MAX_STEPS))
    compile: bool = _field(False, "apply torch.compile to the model (lazily, on the first step)")
    channels_last: bool = _field(True, "NHWC memory layout for the model and batches (1.2x faster steps on CPU here)")
    cudnn_benchmark: bool = _field(False, "CUDA: let cuDNN time its convolution algorithms for each new input shape (faster steps at fixed crop sizes; first steps slower)")
    sync_bn: bool = _field(False, "under DDP, compute BatchNorm statistics over all processes' batches (small per-GPU batches)")
    dist_timeout: int = _field(1800, "under DDP, seconds a process waits for the others (validation included) before failing", between(1, 7 * 24 * 3600))


@attrs.define
class Postprocess:
    thresh: float = _field(0.3, "binarisation threshold on the probability map", between(0, 1, inclusive=False))
    box_thresh: float = _field(0.4, "drop boxes whose mean probability is below this", between(0, 1))
    unclip_ratio: float = _field(1.5, "expand shrunk kernels by area x ratio / perimeter", positive(10.0))
    max_candidates: int = _field(1000, "keep at most this many contours per image (largest first)", between(1, 100_000))
    min_size: float = _field(3.0, "drop boxes whose short side is below this many pixels", between(0, MAX_SIDE))
    polygon: bool = _field(False, "output polygons instead of minimum-area rectangles")
    score_mode: str = _field("fast", "'fast' (bounding-box mean) or 'exact' (mean inside the contour)", one_of("fast", "exact"))


@attrs.define
class Eval:
    long_side: int = _field(1024, "inference resize: longest image side in pixels", multiple_of(32, MAX_SIDE))
    batch_size: int = _field(1, "images per inference batch (images of equal resized size share a forward pass; on a CPU at most 4 x 256² pixels go through one)", between(1, MAX_BATCH))
    tile: int = _field(
        0, "tiled inference (0 = off): pages scaled by tile_scale, not resized to long_side, in overlapping tiles of this side whose probability maps are stitched before post-processing",
        multiple_of(32, MAX_SIDE, allow_zero=True, low=MIN_TILE),
    )
    tile_overlap: int = _field(128, "pixels neighbouring tiles share (at most half of tile): a tile's border effects fall inside its neighbour", between(0, MAX_SIDE))
    tile_scale: float = _field(1.0, "with tile: the page's scale before tiling (1 = native; the scale the model saw its text at in training)", positive(8.0))

    def __attrs_post_init__(self) -> None:
        if self.tile and self.tile_overlap > self.tile // 2:
            raise FieldError("tile_overlap", f"must be at most half of tile ({self.tile}), got {self.tile_overlap}", ("tile",))


@attrs.define
class Recipe:
    name: str = _field("dbtk", "run name (the default run folder is runs/NAME): a folder name, without / or ..", a_folder_name())
    seed: int = _field(42, "seed for Python, numpy and torch RNGs", between(0, 2**32 - 1))
    model: Model = _field(Model, "model components", factory=True)
    loss: Component = _field(lambda: Component("db"), "registered loss plus its parameters", factory=True)
    data: Data = _field(Data, "datasets, targets and augmentation", factory=True)
    train: Train = _field(Train, "optimisation loop", factory=True)
    postprocess: Postprocess = _field(Postprocess, "probability map to boxes", factory=True)
    eval: Eval = _field(Eval, "inference settings for validation, eval and predict", factory=True)
    loggers: list[Component] = _field(
        lambda: [Component("console"), Component("jsonl")], "registered loggers, as [[loggers]] tables", factory=True
    )

    def components(self) -> list[tuple[str, str, Component]]:
        """(key path, registry kind, component) for every component the recipe names."""
        found = [
            ("model.encoder", "encoder", self.model.encoder),
            ("model.decoder", "decoder", self.model.decoder),
            ("model.head", "head", self.model.head),
            ("loss", "loss", self.loss),
            ("data.format", "dataset", self.data.format),
        ]
        found += [(f"loggers.{i}", "logger", c) for i, c in enumerate(self.loggers)]
        return found


for _cls in (Component, Split, Model, Data, Train, Postprocess, Eval, Recipe):
    attrs.resolve_types(_cls)

# ---------------------------------------------------------------------------------------------- cattrs
def _strict(expected: type, label: str) -> Callable[[Any, type], Any]:
    def structure(value: Any, _type: type) -> Any:
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise TypeError(f"expected {label}, got {_describe(value)}")
        return value

    return structure


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return f"{kind.get(type(value), type(value).__name__)} {_short(value)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _structure_component(value: Any, _type: type) -> Component:
    if isinstance(value, str):
        return Component(value)
    if not isinstance(value, dict):
        raise TypeError(f"expected a component name or a table with 'name', got {_describe(value)}")
    params = dict(value)
    name = params.pop("name", None)
    if not isinstance(name, str) or not name:
        raise FieldError("name", "is required: the registered name of the component")
    return Component(name, params)


def _unstructure_component(component: Component) -> dict[str, Any]:
    return component.as_table()


def _structure_split(value: Any, _type: type) -> Split | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Split(images=value)
    if isinstance(value, dict):
        return _base_converter.structure(value, Split)
    raise TypeError(f"expected a folder path or a table {{images, annotations}}, got {_describe(value)}")


def _unstructure_split(split: Split | None) -> Any:
    if split is None:
        return None
    if split.annotations is None:
        return split.images
    return {"images": split.images, "annotations": split.annotations}


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook(float, _strict(float, "a number"))
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(bool, _strict(bool, "true or false"))
    return converter


def _table_hook(cls: type) -> Callable[[Any, type], Any]:
    """cattrs' structuring of a schema table, refusing a value that is not a table: cattrs alone would test keys
    with ``in`` and fail with "argument of type 'int' is not iterable" (``train = 5``)."""
    return _refusing(Mapping, "a table", make_dict_structure_fn(cls, converter))


def _array_hook(tp: Any) -> Callable[[Any, type], Any]:
    """cattrs' structuring of an array, refusing a value that is not one: cattrs alone would iterate a string
    character by character (``loggers = "jsonl"`` as five loggers) and a table key by key."""
    return _refusing(list, "an array", list_structure_factory(tp, converter))


def _refusing(kind: type, expected: str, generated: Callable[[Any, type], Any]) -> Callable[[Any, type], Any]:
    def structure(value: Any, tp: type) -> Any:
        if not isinstance(value, kind):
            raise TypeError(f"expected {expected}, got {_describe(value)}")
        return generated(value, tp)

    return structure


_base_converter = _make_converter()
converter = _make_converter()
converter.register_structure_hook_factory(lambda tp: _is_table(tp), _table_hook)  # _is_table: defined below
converter.register_structure_hook_factory(lambda tp: get_origin(tp) is list, _array_hook)
converter.register_structure_hook(Component, _structure_component)
converter.register_unstructure_hook(Component, _unstructure_component)
converter.register_structure_hook(Split | None, _structure_split)
converter.register_unstructure_hook(Split | None, _unstructure_split)
converter.register_unstructure_hook(Split, _unstructure_split)


# ---------------------------------------------------------------------------------------------- errors
def _leaf_errors(exc: BaseException, path: tuple[str, ...]) -> Iterable[tuple[tuple[str, ...], BaseException]]:
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        for sub in exc.exceptions:
            notes = getattr(sub, "__notes__", [])
            step: tuple[str, ...] = ()
            for note in notes:
                if hasattr(note, "name"):
                    step = (note.name,)
                elif hasattr(note, "index"):
                    step = (str(note.index),)
            yield from _leaf_errors(sub, path + step)
    else:
        yield path, exc


@attrs.frozen
class _Problem:
    """One invalid key, as data; :meth:`error` words it once the source of the key (file or ``--set``) is known."""

    path: tuple[str, ...]
    detail: str = ""
    unknown: bool = False
    suggestion: tuple[str, ...] | None = None
    hint: str | None = None
    #: Other keys the check compared this one with: a ``--set`` of any of them is named as the source.
    related: tuple[tuple[str, ...], ...] = ()

    def error(self, source: str) -> RecipeError:
        where = f" in {source}" if source else ""
        key = ".".join(self.path)
        if self.unknown:
            guess = f" (did you mean '{'.'.join(self.suggestion)}'?)" if self.suggestion else ""
            return RecipeError(f"unknown key '{key}'{where}{guess}", hint=self.hint)
        return RecipeError(f"{key or 'recipe'}{where}: {self.detail}", hint=self.hint)


def _unknown_key(table: tuple[str, ...], key: str, known: Sequence[str]) -> _Problem:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return _Problem(
        (*table, key),
        unknown=True,
        suggestion=(*table, close[0]) if close else None,
        hint=f"keys allowed in [{'.'.join(table) or 'top level'}]: {', '.join(known)}",
    )


def _problem(exc: ClassValidationError) -> _Problem:
    path, leaf = next(iter(_leaf_errors(exc, ())))
    if isinstance(leaf, ForbiddenExtraKeysError):
        return _unknown_key(path, sorted(leaf.extra_fields)[0], [f.name for f in attrs.fields(leaf.cl)])
    if isinstance(leaf, FieldError):
        return _Problem((*path, leaf.field_name), str(leaf), related=tuple((*path, name) for name in leaf.related))
    if isinstance(leaf, KeyError):
        return _Problem(path, "missing required key", related=(path[:-1],))
    return _Problem(path, str(leaf))


def _source_of(problem: _Problem, source: str, applied: Sequence[tuple[tuple[str, ...], str]]) -> str:
    """Where the problem's key came from: the last ``--set`` that wrote it (or a key it was checked against),
    otherwise ``source``."""
    keys = [key for key in (problem.path, *problem.related) if key]
    for parts, override in reversed(applied):
        if any(key[: len(parts)] == parts or parts[: len(key)] == key for key in keys):
            return f"--set '{override}'"
    return source


# ---------------------------------------------------------------------------------------------- public API
def structure(data: Mapping[str, Any], source: str = "") -> Recipe:
    """Build a validated :class:`Recipe` from a parsed TOML mapping; raises :class:`RecipeError`."""
    return _structure(data, source, ())


def _structure(data: Mapping[str, Any], source: str, applied: Sequence[tuple[tuple[str, ...], str]]) -> Recipe:
    try:
        return converter.structure(_with_component_defaults(dict(data), Recipe), Recipe)
    except ClassValidationError as exc:
        problem = _problem(exc)
        raise problem.error(_source_of(problem, source, applied)) from exc


def _with_component_defaults(data: dict[str, Any], cls: type) -> dict[str, Any]:
    """A component table written without ``name`` configures the default component (``[model.decoder]
    channels = 128`` keeps ``fpn`` and its other defaults), exactly as a ``--set`` override does."""
    defaults = cls()
    for f in attrs.fields(cls):
        value = data.get(f.name)
        if not isinstance(value, dict):
            continue
        if f.type is Component and "name" not in value:
            data[f.name] = {**getattr(defaults, f.name).as_table(), **value}
        elif _is_table(f.type):
            data[f.name] = _with_component_defaults(dict(value), f.type)
    return data


def _is_table(tp: Any) -> bool:
    """A schema table whose keys are schema fields (not a component's free-form parameters, not a split)."""
    return attrs.has(tp) and tp not in (Split, Component)


def unstructure(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain TOML-ready data (``None`` values dropped)."""
    return _drop_none(converter.unstructure(recipe))


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path.absolute()}", hint="pass the path of a .toml recipe, e.g. recipes/quickstart.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path.absolute()}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None


def load(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe file, apply ``--set`` overrides, validate, and make its paths absolute.

    Relative paths written in the file are relative to the file's folder, those given with ``--set`` to the current
    folder (see :func:`_absolute_paths`). An error names the ``--set`` item when one wrote the key, else the file.
    """
    path = Path(path)
    return _build(read_toml(path), overrides, str(path), path.absolute().parent)


def with_overrides(recipe: Recipe, overrides: Sequence[str]) -> Recipe:
    """Apply ``--set`` overrides to a recipe that is not a file (the defaults, a checkpoint's), exactly as
    :func:`load` does: errors name the ``--set`` item, relative paths resolve against the current folder."""
    return _build(unstructure(recipe), overrides, "", None)


def _build(data: dict[str, Any], overrides: Sequence[str], source: str, folder: Path | None) -> Recipe:
    applied = [(apply_override(data, override), override) for override in overrides]
    recipe = _structure(data, source, applied)
    return _absolute_paths(recipe, folder, [parts for parts, _ in applied])


# ---------------------------------------------------------------------------------------------- paths
#: Dataset readers whose ``data.train`` / ``data.val`` values are split names, not paths: left as written.
NAMED_SPLIT_FORMATS = frozenset({"synthetic"})
#: Suffixes of weights files: a ``pretrained`` string ending in one is a file, even one that does not exist yet.
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar", ".npz")


def _absolute_paths(recipe: Recipe, folder: Path | None, overridden: Sequence[tuple[str, ...]]) -> Recipe:
    """The recipe with every relative path made absolute: a value from ``--set`` (a key in ``overridden``) against
    the current folder, a value from the file against ``folder`` (kept as written when ``folder`` is None).

    Path keys: ``data.train`` and ``data.val`` (images and annotations) unless the format is one of
    :data:`NAMED_SPLIT_FORMATS`, ``data.cache`` unless 'off' or 'auto', and the encoder's ``pretrained`` when it
    is a string that names a file (see :func:`_names_a_file`; a timm tag stays as written).
    """

    def base_of(key: tuple[str, ...]) -> Path | None:
        return Path.cwd() if any(key[: len(parts)] == parts for parts in overridden) else folder

    def resolve(key: tuple[str, ...], value: str) -> str:
        base = base_of(key)
        return value if base is None else os.path.normpath(base / Path(value).expanduser())

    data, encoder = recipe.data, recipe.model.encoder
    changes: dict[str, Any] = {}
    if data.format.name.rpartition(":")[2] not in NAMED_SPLIT_FORMATS:
        for name in ("train", "val"):
            split = getattr(data, name)
            if split is not None:
                annotations = split.annotations
                changes[name] = Split(
                    resolve(("data", name, "images"), split.images),
                    None if annotations is None else resolve(("data", name, "annotations"), annotations),
                )
    if data.cache not in ("off", "auto"):
        changes["cache"] = resolve(("data", "cache"), data.cache)
    key = ("model", "encoder", "pretrained")
    pretrained = encoder.params.get("pretrained")
    if pretrained == "":  # an unset shell variable (--set model.encoder.pretrained=$W) must not mean "no weights"
        raise RecipeError('model.encoder.pretrained = "": give true, false, a timm tag or a weights file')
    if isinstance(pretrained, str) and _names_a_file(pretrained, base_of(key)):
        encoder = attrs.evolve(encoder, params={**encoder.params, "pretrained": resolve(key, pretrained)})
    return attrs.evolve(recipe, data=attrs.evolve(data, **changes), model=attrs.evolve(recipe.model, encoder=encoder))


def _names_a_file(value: str, base: Path | None) -> bool:
    """Whether an encoder's ``pretrained`` string is a file rather than a timm pretrained tag (``resnet18.a1_in1k``,
    which must reach the encoder as written, not as ``/recipe/folder/resnet18.a1_in1k``): it has a folder in it
    (or ``~``), ends in a weights suffix, or exists next to the recipe (or in the current folder, for ``--set``)."""
    if not value:
        return False
    if any(sep in value for sep in ("/", "\\", os.sep)) or value.startswith("~") or value.lower().endswith(WEIGHTS_SUFFIXES):
        return True
    return (base or Path.cwd()).joinpath(value).exists()


# ---------------------------------------------------------------------------------------------- --set overrides
def override_key(override: str) -> tuple[str, ...]:
    """The key path of one ``key.path=value`` override (``("train", "lr")``); a malformed one is a RecipeError."""
    key, sep, _ = override.partition("=")
    parts = tuple(part.strip() for part in key.split("."))
    if not sep or not all(parts):
        raise RecipeError(f"bad --set '{override}': expected KEY=VALUE", hint="for example: --set train.lr=5e-4")
    return parts


def apply_override(data: dict[str, Any], override: str) -> tuple[str, ...]:
    """Apply one ``key.path=value`` override in place, typing the value by the schema; returns the key path.

    The key must be a schema key (a component table's own parameters are free-form: its signature checks them).
    String fields take the text as is (``--set name=123`` is the string "123"); component and split fields take a
    name or path, or an inline table ``{ ... }``; other values are TOML literals (``5e-4``, ``true``, ``[1, 2]``),
    falling back to the raw text so the type check names the key. Every error names the ``--set`` item.
    """
    parts = override_key(override)
    value = _parse_override_value(_override_type(parts, override), override.partition("=")[2].strip(), override)
    node = data
    for depth, part in enumerate(parts[:-1]):
        here = parts[: depth + 1]
        child = node.get(part, {})
        shorthand = _shorthand_key(here)
        if isinstance(child, str) and shorthand:
            child = {shorthand: child}  # data.format = "x" with --set data.format.count=3
        if not isinstance(child, dict):
            raise RecipeError(f"bad --set '{override}': '{'.'.join(here)}' is not a table in the recipe")
        node[part] = child
        node = child
    node[parts[-1]] = value
    return parts


def _override_type(parts: tuple[str, ...], override: str) -> Any:
    """The schema type a ``--set`` key sets (``None`` for a component's own parameter). Refuses, naming the item:
    a key outside the schema (with did-you-mean), a table set to a value, a value used as a table, an array item."""
    source = f"--set '{override}'"
    cls: Any = Recipe
    for depth, part in enumerate(parts):
        here, rest = parts[: depth + 1], parts[depth + 1 :]
        name = ".".join(here)
        fields = attrs.fields_dict(cls)
        if part not in fields:
            raise _unknown_key(parts[:depth], part, list(fields)).error(source)
        tp = fields[part].type
        if tp is Component:
            if any(p.isdigit() for p in rest):
                raise RecipeError(f"bad --set '{override}': array items cannot be set one by one",
                                  hint=f"set the whole array: --set {'.'.join(parts[:-1])}=[...]")
            return None if rest else tp
        if tp == Split | None:
            if rest and rest[0] not in attrs.fields_dict(Split):
                raise _unknown_key(here, rest[0], [f.name for f in attrs.fields(Split)]).error(source)
            if len(rest) > 1:
                raise RecipeError(f"bad --set '{override}': '{name}.{rest[0]}' is a string, not a table")
            return str if rest else tp
        if tp == list[Component]:
            if rest:
                raise RecipeError(f"bad --set '{override}': arrays of tables cannot be overridden", hint="edit the recipe file instead")
            return tp
        if _is_table(tp):
            if not rest:
                raise RecipeError(f"bad --set '{override}': '{name}' is a table, not a value",
                                  hint=f"set one of its keys, e.g. --set {name}.{attrs.fields(tp)[0].name}=...")
            cls = tp
            continue
        if rest:
            kind = _type_name(tp)
            raise RecipeError(f"bad --set '{override}': '{name}' is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a table")
        return tp
    raise AssertionError("unreachable: the loop returns at the last key")


def _shorthand_key(path: Sequence[str]) -> str | None:
    """The table key a plain string stands for at ``path``: a component's ``name``, a split's ``images``."""
    cls: Any = Recipe
    for key in path[:-1]:
        field = attrs.fields_dict(cls).get(key) if _is_table(cls) else None
        if field is None:
            return None
        cls = field.type
    field = attrs.fields_dict(cls).get(path[-1]) if _is_table(cls) else None
    if field is None:
        return None
    return {Component: "name", Split | None: "images"}.get(field.type)


def _parse_override_value(tp: Any, text: str, override: str) -> Any:
    if tp is str:
        return _unquote(text)
    if tp is Component or tp == Split | None:
        if not text.startswith("{"):
            return _unquote(text)
        try:
            return tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"bad --set '{override}': not a valid inline table ({exc})") from None
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return parsed["value"] if len(parsed) == 1 else text


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


# ---------------------------------------------------------------------------------------------- resume
#: Keys a resumed run may change (docs/training.md), and how: "grow" only upward (the run trains longer; 0, "all
#: epochs", cannot grow), "any" freely (how the run reports and where it runs). Every other key must stay the run's.
RESUME_CHANGES: dict[str, str] = {
    "train.max_steps": "grow",
    "train.epochs": "grow",
    "train.log_every": "any",
    "train.val_every": "any",
    "train.val_every_steps": "any",
    "train.checkpoint_every": "any",
    "train.workers": "any",
    "train.device": "any",
    "train.dist_timeout": "any",
    "loggers": "any",
}


def with_planned_steps(run: Recipe, requested: Recipe) -> Recipe:
    """``requested`` with the step count the run fixed from its ``train.time_budget`` (same budget, max_steps 0
    on the command line): a resumed or re-run budgeted run continues to the same last step, never re-plans."""
    ran, asked = run.train, requested.train
    if asked.time_budget and asked.time_budget == ran.time_budget and asked.max_steps == 0 and ran.max_steps > 0:
        return attrs.evolve(requested, train=attrs.evolve(asked, max_steps=ran.max_steps))
    return requested


def check_resume(run: Recipe, requested: Recipe, run_source: str) -> None:
    """Refuse to resume a run (recipe ``run``, from ``run_source``) with a recipe that differs from it in a key
    :data:`RESUME_CHANGES` does not allow to change (or not that way): a RecipeError naming the key. What passes is
    the run's recipe plus the allowed changes, i.e. ``requested``: the recipe the run continues with.

    Relative paths in the run's recipe (checkpoints of dbtk versions that stored them as given) were relative to the
    folder the run started in, which a resume had to start in too: they resolve against the current folder.
    """
    ours = _flatten(unstructure(_absolute_paths(run, Path.cwd(), ())))
    theirs = _flatten(unstructure(requested))
    refused = []
    for key in dict.fromkeys([*ours, *theirs]):
        old, new = ours.get(key), theirs.get(key)
        if _shown(old) == _shown(new):  # equal as TOML: 1 and 1.0, or true and 1, differ
            continue
        rule = RESUME_CHANGES.get(key)
        if not (rule == "any" or (rule == "grow" and isinstance(old, int) and isinstance(new, int) and 0 < old < new)):
            refused.append(key)
    if not refused:
        return
    key = refused[0]
    old, new = ours.get(key), theirs.get(key)
    values = f"{_shown(old)} in the run, {_shown(new)} on the command line"
    also = f" (also differs: {', '.join(refused[1:])})" if refused[1:] else ""
    keep = f"--set {key}={_toml_value(old)}" if old is not None else f"leave {key} unset"
    if RESUME_CHANGES.get(key) == "grow":
        raise RecipeError(
            f"--resume: {key} may only grow: it is {values}{also}",
            hint=f"{keep} continues the run as planned; a larger value trains longer; --stop-at STEP stops earlier",
        )
    raise RecipeError(
        f"--resume: the run's recipe differs from the command line's at {key}: {values}{also}",
        hint=f"resume with the run's value ({keep}), or start a new run with another --out (the run's recipe: "
        f"{run_source}; what may change on resume: docs/training.md)",
    )


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key → value for every value that is not a table (arrays stay whole)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(value: Any) -> str:
    return "unset" if value is None else _toml_value(value)


def dumps(recipe: Recipe) -> str:
    """Resolved recipe as TOML text; ``loads(dumps(r)) == r``."""
    return _toml_document(unstructure(recipe))


def loads(text: str, source: str = "") -> Recipe:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{source or 'recipe'}: invalid TOML: {exc}") from None
    return structure(data, source)


def check_components(recipe: Recipe, reg: Registry, *, import_components: bool = True) -> list[tuple[str, Entry]]:
    """Resolve every component name in the recipe, and (importing them) check their parameters.

    Returns (key path, registry entry) pairs. Errors are prefixed with the key path, e.g.
    ``model.decoder: unknown parameter 'chanels' for decoder 'fpn' (did you mean 'channels'?)``.
    """
    from dbtk.registry import PROVIDED, check_params

    resolved = []
    for path, kind, component in recipe.components():
        try:
            entry = reg.resolve(kind, component.name)
            if import_components:
                factory = reg.load_entry(entry)
                check_params(factory, component.params, kind=kind, name=component.name, provided=PROVIDED[kind])
                check_param_types(factory, component.params, kind=kind, name=component.name)
        except DbtkError as exc:
            exc.message = f"{path}: {exc.message}"
            raise
        resolved.append((path, entry))
    if import_components:
        _build_named_splits(recipe, reg)
    return resolved


#: Annotations whose values a recipe can hold, and how an error names them.
_VALUE_TYPES: dict[type, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_param_types(factory: Callable[..., Any], params: Mapping[str, Any], *, kind: str, name: str) -> None:
    """Check recipe values against the factory's parameter annotations where they are plain values (``int``,
    ``float``, ``bool``, ``str``, unions of them and ``None``): the signature check passes ``count = "8"`` or
    ``count = 1.5``, which would fail (or misbehave) only when the component runs. Other annotations are the
    component's own to check."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: the call itself reports
        return
    namespace = vars(sys.modules[factory.__module__]) if getattr(factory, "__module__", None) in sys.modules else {}
    for key, value in params.items():
        parameter = parameters.get(key)
        allowed = _value_types(parameter.annotation, namespace) if parameter is not None else None
        if allowed is None or _has_type(value, allowed):
            continue
        raise RecipeError(
            f"parameter '{key}' of {kind} '{name}' must be {' or '.join(_VALUE_TYPES[t] for t in allowed)}, got {_describe(value)}",
            hint=f"its annotation in {getattr(factory, '__qualname__', name)}: {_annotation_text(parameter.annotation)}",
        )


def _value_types(annotation: Any, namespace: Mapping[str, Any]) -> tuple[type, ...] | None:
    """The plain value types ``annotation`` allows (``None`` dropped: TOML has no null), or None when it names
    anything else or cannot be evaluated (a name imported only for type checkers)."""
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, dict(namespace))  # noqa: S307 - the component's own annotation text
        except Exception:  # noqa: BLE001 - unresolvable names: not a plain value type
            return None
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    members = tuple(m for m in members if m is not type(None))
    if not members or not all(m in _VALUE_TYPES for m in members):
        return None
    return members


def _has_type(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    return any(isinstance(value, t) for t in allowed if t is not bool)


def _annotation_text(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _build_named_splits(recipe: Recipe, reg: Registry) -> None:
    """Build the reader of a format whose splits are names (:data:`NAMED_SPLIT_FORMATS`: building reads no file),
    so that its own checks of its parameters (``count = -1``) run when the recipe is checked, not when training
    starts. Readers of folders are built, and their folders read, by ``dbtk train --dry-run``."""
    data = recipe.data
    if data.format.name.rpartition(":")[2] not in NAMED_SPLIT_FORMATS:
        return
    for key, split in (("data.train", data.train), ("data.val", data.val)):
        build_component(reg, key, "dataset", data.format, split=split)


def build_component(reg: Registry, key: str, kind: str, component: Component, **provided: Any) -> Any:
    """Build the component at recipe ``key`` (a reader, a logger); any failure of its constructor is one error
    naming the key — a plugin's own check of its settings (a ValueError ...) is the user's to fix."""
    try:
        return reg.build(kind, component.as_table(), **provided)
    except DbtkError as exc:
        exc.message = f"{key}: {exc.message}"
        raise
    except Exception as exc:  # noqa: BLE001 - any plugin's refusal, in its own words
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise RecipeError(f"{key}: {kind} '{component.name}' refused its settings: {type(exc).__name__}: {first}") from exc


def field_docs() -> list[tuple[str, str, Any, str]]:
    """(key path, type, default, help) for every schema key; used to generate and check docs/recipes.md."""
    rows: list[tuple[str, str, Any, str]] = []

    def walk(cls: type, prefix: str) -> None:
        instance = cls()
        for f in attrs.fields(cls):
            if _is_table(f.type):
                walk(f.type, f"{prefix}{f.name}.")
                continue
            default = getattr(instance, f.name)
            default = converter.unstructure(default)
            rows.append((prefix + f.name, _type_name(f.type), default, f.metadata.get("help", "")))

    walk(Recipe, "")
    return rows


def _type_name(tp: Any) -> str:
    names = {str: "string", int: "integer", float: "float", bool: "boolean", Component: "component"}
    if tp in names:
        return names[tp]
    if tp == (Split | None):
        return "path or table"
    if tp == list[Component]:
        return "array of components"
    return getattr(tp, "__name__", str(tp))


# ---------------------------------------------------------------------------------------------- TOML writer
def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key, ensure_ascii=False)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_document(data: Mapping[str, Any], prefix: str = "") -> str:
    lines: list[str] = []
    for key, value in data.items():
        if not isinstance(value, dict) and not _is_table_array(value):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    blocks = ["\n".join(lines)] if lines else []
    for key, value in data.items():
        name = f"{prefix}{_toml_key(key)}"
        if isinstance(value, dict):
            body = _toml_document(value, prefix=f"{name}.")
            header = f"[{name}]"
            scalars = any(not isinstance(v, dict) and not _is_table_array(v) for v in value.values())
            blocks.append(f"{header}\n{body}" if scalars or not value else body)
        elif _is_table_array(value):
            for item in value:
                blocks.append(f"[[{name}]]\n{_toml_document(item, prefix=f'{name}.')}".rstrip())
    return "\n\n".join(b.rstrip() for b in blocks if b.strip()) + "\n"


def format_default(value: Any) -> str:
    """A default value as it would be written in TOML (``-`` for unset)."""
    if value is None:
        return "-"
    return _toml_value(value)
