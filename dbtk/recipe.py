"""Typed TOML recipes: schema, loading, ``--set`` overrides, validation and dumping.

A recipe is plain data: component tables name registered components (see :mod:`dbtk.registry`), never import
paths. Files are parsed with tomllib (tomli before Python 3.11) and structured by cattrs into the attrs classes
below, with strict types, range checks and error messages that carry the full key path and a suggestion.

Every field's ``help`` metadata is the documentation: docs/recipes.md is checked against it by a test.
This module must not import torch or any other heavy dependency.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)

from dbtk.errors import DbtkError, RecipeError, did_you_mean

if TYPE_CHECKING:
    from dbtk.registry import Entry, Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


class FieldError(ValueError):
    """A value that has the right type but is not allowed; carries the field name for the key path."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


# ---------------------------------------------------------------------------------------------- validators
def _validator(check: Callable[[Any], bool], describe: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    def validate(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not check(value):
            raise FieldError(attribute.name, f"must be {describe}, got {value!r}")

    return validate


def at_least(low: float) -> Callable[[Any, attrs.Attribute, Any], None]:
    return _validator(lambda v: v >= low, f">= {low}")


def positive() -> Callable[[Any, attrs.Attribute, Any], None]:
    return _validator(lambda v: v > 0 and math.isfinite(v), "> 0")


def between(low: float, high: float, *, inclusive: bool = True) -> Callable[[Any, attrs.Attribute, Any], None]:
    if inclusive:
        return _validator(lambda v: low <= v <= high, f"between {low} and {high}")
    return _validator(lambda v: low < v < high, f"strictly between {low} and {high}")


def one_of(*choices: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    return _validator(lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


def multiple_of(step: int, *, allow_zero: bool = False) -> Callable[[Any, attrs.Attribute, Any], None]:
    zero = " (or 0)" if allow_zero else ""
    return _validator(
        lambda v: (allow_zero and v == 0) or (v > 0 and v % step == 0), f"a positive multiple of {step}{zero}"
    )


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

    images: str = _field(None, "image folder (or dataset root for ICDAR2015: images/ + gts/)")
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
    image_size: int = _field(640, "training input side in pixels (LongestMaxSize + pad)", multiple_of(32))
    crop: int = _field(
        0, "random crops of this side at native scale instead of resizing whole images (0 = off)",
        multiple_of(32, allow_zero=True),
    )
    shrink_ratio: float = _field(0.4, "DB shrink ratio r of the probability-map kernels", between(0, 1, inclusive=False))
    thresh_min: float = _field(0.3, "threshold-map value far from text", between(0, 1))
    thresh_max: float = _field(0.7, "threshold-map value on text borders", between(0, 1))
    min_text_size: float = _field(3.0, "text shorter than this many pixels after augmentation becomes don't-care", at_least(0))
    augment: bool = _field(True, "random scale, rotation, crop position and colour jitter for training")
    scale_min: float = _field(0.5, "smallest random scale (relative to LongestMaxSize, or to native size with crop)", positive())
    scale_max: float = _field(1.5, "largest random scale", positive())
    rotate: float = _field(10.0, "largest random rotation in degrees", between(0, 180))
    color_jitter: float = _field(0.3, "strength of brightness/contrast/saturation jitter (0 = off)", between(0, 1))
    cache: str = _field("off", "decoded-sample cache: 'off', 'auto' (user cache folder) or a folder path")

    def __attrs_post_init__(self) -> None:
        if self.thresh_min >= self.thresh_max:
            raise FieldError("thresh_max", f"must be greater than thresh_min ({self.thresh_min}), got {self.thresh_max}")
        if self.scale_min > self.scale_max:
            raise FieldError("scale_max", f"must be at least scale_min ({self.scale_min}), got {self.scale_max}")


@attrs.define
class Train:
    epochs: int = _field(100, "passes over the training set", at_least(1))
    max_steps: int = _field(0, "stop after this many optimizer steps (0 = run all epochs)", at_least(0))
    batch_size: int = _field(2, "images per forward pass, per process", at_least(1))
    accumulate: int = _field(1, "forward passes per optimizer step (effective batch = batch_size x accumulate)", at_least(1))
    precision: str = _field("bf16", "autocast precision: 'fp32', 'bf16' or 'fp16' (fp16 uses a GradScaler)", one_of("fp32", "bf16", "fp16"))
    optimizer: str = _field("adamw", "optimizer: 'adamw' or 'sgd'", one_of("adamw", "sgd"))
    lr: float = _field(1e-3, "peak learning rate", positive())
    weight_decay: float = _field(1e-4, "decoupled weight decay", at_least(0))
    grad_clip: float = _field(5.0, "clip the gradient norm to this value (0 = off)", at_least(0))
    scheduler: str = _field("poly", "learning-rate schedule after warmup: 'poly', 'cosine' or 'constant'", one_of("poly", "cosine", "constant"))
    warmup_steps: int = _field(0, "linear warmup steps", at_least(0))
    workers: int = _field(4, "data-loader worker processes", at_least(0))
    device: str = _field("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    val_every: int = _field(1, "validate every N epochs (0 = never)", at_least(0))
    val_every_steps: int = _field(0, "also validate every N optimizer steps (0 = off)", at_least(0))
    checkpoint_every: int = _field(500, "write checkpoints/last every N optimizer steps, besides each epoch end (0 = epoch ends only)", at_least(0))
    log_every: int = _field(10, "log metrics every N optimizer steps (the only host syncs in the loop)", at_least(1))
    max_bad_steps: int = _field(20, "stop after this many consecutive non-finite steps", at_least(1))
    compile: bool = _field(False, "apply torch.compile to the model (lazily, on the first step)")
    channels_last: bool = _field(True, "NHWC memory layout for the model and batches (1.2x faster steps on CPU here)")
    sync_bn: bool = _field(False, "under DDP, compute BatchNorm statistics over all processes' batches (small per-GPU batches)")
    dist_timeout: int = _field(1800, "under DDP, seconds a process waits for the others (validation included) before failing", at_least(1))


@attrs.define
class Postprocess:
    thresh: float = _field(0.3, "binarisation threshold on the probability map", between(0, 1, inclusive=False))
    box_thresh: float = _field(0.4, "drop boxes whose mean probability is below this", between(0, 1))
    unclip_ratio: float = _field(1.5, "expand shrunk kernels by area x ratio / perimeter", positive())
    max_candidates: int = _field(1000, "keep at most this many contours per image (largest first)", at_least(1))
    min_size: float = _field(3.0, "drop boxes whose short side is below this many pixels", at_least(0))
    polygon: bool = _field(False, "output polygons instead of minimum-area rectangles")
    score_mode: str = _field("fast", "'fast' (bounding-box mean) or 'exact' (mean inside the contour)", one_of("fast", "exact"))


@attrs.define
class Eval:
    long_side: int = _field(1024, "inference resize: longest image side in pixels", multiple_of(32))
    batch_size: int = _field(1, "images per inference batch", at_least(1))


@attrs.define
class Recipe:
    name: str = _field("dbtk", "run name (the default run folder is runs/NAME)")
    seed: int = _field(42, "seed for Python, numpy and torch RNGs", at_least(0))
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

#: Field types whose ``--set`` value is taken as plain text, never parsed as TOML.
_TEXT_TYPES = (str, Component, Split | None)


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


_base_converter = _make_converter()
converter = _make_converter()
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


def _schema_at(path: Sequence[str]) -> type | None:
    """The attrs class found at a key path, if the path runs through typed tables only."""
    cls: Any = Recipe
    for key in path:
        if key.isdigit():
            continue
        fields = attrs.fields_dict(cls) if attrs.has(cls) else {}
        if key not in fields:
            return None
        cls = fields[key].type
    return cls if attrs.has(cls) else None


def _recipe_error(exc: ClassValidationError, source: str) -> RecipeError:
    path, leaf = next(iter(_leaf_errors(exc, ())))
    where = f" in {source}" if source else ""
    if isinstance(leaf, ForbiddenExtraKeysError):
        key = sorted(leaf.extra_fields)[0]
        known = [f.name for f in attrs.fields(leaf.cl)]
        full = ".".join((*path, key))
        suggestion = did_you_mean(key, known)
        if suggestion:
            suggestion = f" (did you mean '{'.'.join((*path, suggestion.split(chr(39))[1]))}'?)"
        return RecipeError(
            f"unknown key '{full}'{where}{suggestion}",
            hint=f"keys allowed in [{'.'.join(path) or 'top level'}]: {', '.join(known)}",
        )
    if isinstance(leaf, FieldError):
        full = ".".join((*path, leaf.field_name))
        return RecipeError(f"{full}{where}: {leaf}")
    if isinstance(leaf, KeyError):
        return RecipeError(f"{'.'.join(path)}{where}: missing required key")
    return RecipeError(f"{'.'.join(path) or 'recipe'}{where}: {leaf}")


# ---------------------------------------------------------------------------------------------- public API
def structure(data: Mapping[str, Any], source: str = "") -> Recipe:
    """Build a validated :class:`Recipe` from a parsed TOML mapping; raises :class:`RecipeError`."""
    try:
        return converter.structure(_with_component_defaults(dict(data), Recipe), Recipe)
    except ClassValidationError as exc:
        raise _recipe_error(exc, source) from exc


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
        elif attrs.has(f.type) and f.type not in (Split, Component):
            data[f.name] = _with_component_defaults(dict(value), f.type)
    return data


def unstructure(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain TOML-ready data (``None`` values dropped)."""
    return _drop_none(converter.unstructure(recipe))


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path}", hint="pass the path of a .toml recipe, e.g. recipes/quickstart.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None


def load(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe file, apply ``--set`` overrides and validate the result."""
    data = read_toml(path)
    for override in overrides:
        apply_override(data, override)
    return structure(data, source=str(path))


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``key.path=value`` override in place, typing the value by the schema.

    String fields take the text as is (``--set name=123`` is the string "123"); other values are parsed as TOML
    literals (``5e-4``, ``true``, ``[1, 2]``), falling back to the raw text so the type check names the key.
    """
    key, sep, text = override.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p for p in parts):
        raise RecipeError(f"bad --set '{override}': expected KEY=VALUE", hint="for example: --set train.lr=5e-4")
    if any(p.isdigit() for p in parts):
        raise RecipeError(f"bad --set '{override}': arrays of tables cannot be overridden", hint="edit the recipe file instead")
    value = _parse_override_value(parts, text.strip())
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str) and _is_shorthand(parts[: depth + 1]):
            child = {"name": child}  # e.g. data.format = "x" set with --set data.format.count=3
        if child is None:
            child = _default_table(parts[: depth + 1])
        if not isinstance(child, dict):
            raise RecipeError(f"bad --set '{override}': '{'.'.join(parts[: depth + 1])}' is not a table")
        node[part] = child
        node = child
    node[parts[-1]] = value


def _default_table(path: Sequence[str]) -> dict[str, Any]:
    """A new table for an override path: a component not written in the recipe starts from its default."""
    parent = _schema_at(path[:-1])
    if parent is None or attrs.fields_dict(parent)[path[-1]].type is not Component:
        return {}
    default = getattr(parent(), path[-1])
    return default.as_table()


def _is_shorthand(path: Sequence[str]) -> bool:
    parent = _schema_at(path[:-1])
    if parent is None:
        return False
    return attrs.fields_dict(parent)[path[-1]].type is Component


def _parse_override_value(path: Sequence[str], text: str) -> Any:
    parent = _schema_at(path[:-1])
    if parent is not None and path[-1] in attrs.fields_dict(parent):
        field_type = attrs.fields_dict(parent)[path[-1]].type
        if field_type in _TEXT_TYPES:
            return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


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
        except DbtkError as exc:
            exc.message = f"{path}: {exc.message}"
            raise
        resolved.append((path, entry))
    return resolved


def field_docs() -> list[tuple[str, str, Any, str]]:
    """(key path, type, default, help) for every schema key; used to generate and check docs/recipes.md."""
    rows: list[tuple[str, str, Any, str]] = []

    def walk(cls: type, prefix: str) -> None:
        instance = cls()
        for f in attrs.fields(cls):
            if attrs.has(f.type) and f.type not in (Split, Component):
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
