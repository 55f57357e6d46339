"""The generated CLI table: every command × every input/output slot and option × hostile values, each run as a
subprocess. Every case must end in exit 0 (only where the value is legal), or exit 1/2 with exactly one ``error:``
line; never a traceback; every input byte-identical afterwards.

Nothing here is a hand-picked list of cases. The commands come from ``dbtk.cli.COMMANDS``, their slots from the
click parameters, and the values from each parameter's type:

- a ``click.Path`` whose valid value (in the command's baseline) is an existing fixture is an *input* and gets the
  variants of that fixture's kind (missing, under a file, the other kind of path, empty, garbage, truncated,
  unreadable, non-finite numbers, another kind of file; for data folders also no images, no labels, an unreadable
  label file or image folder, undecodable images); any other path is an *output* and gets a path under a file, a
  read-only location and the other kind of path;
- INT/FLOAT options (and tuples of them) get -1, 0, huge, 1.5 / nan / ±inf and 'abc'; whether a value must be
  refused is read from the option's own range (``type.convert``); a Choice gets a bogus choice;
- free-text options are classified in :data:`TEXT`: ``--set`` gets unknown keys and bad values, ``--format``
  every registered reader name and a bogus one, ``--device`` bogus devices.

A new option enters the table by construction; one whose kind the table cannot tell (an untyped string) or a
new command without a baseline in :data:`BASELINES` fails ``test_every_slot_has_hostile_values``.

Read-only and unreadable paths: the suite may run as root (CI containers do), for whom ``chmod`` denies
nothing. A denied read is a symlink to a file the kernel refuses even root (``/proc/sys/vm/compact_memory`` is
write-only), a denied listing one to ``/proc/1/map_files``, a denied write a path under ``/sys`` (sysfs refuses
new files: EACCES/EPERM, or EROFS where it is mounted read-only); as another user a ``chmod``-ed file or folder
does. Each is probed first; a value that does not really fail is skipped, never faked. "Under a file" (a path
whose parent is a regular file: ENOTDIR) fails for everyone.

The default run takes one value per slot plus one case per variant (fixed choice, about 70 subprocesses); the
``slow`` variant runs the whole table. Counts go to the reliability tally.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import random
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest

from dbtk.cli import COMMANDS
from tests.conftest import REPO
from tests.reliability.conftest import TALLY
from tests.test_weights import TAG

# ------------------------------------------------------------------------------------------------ fixtures
RECIPE = """\
name = "table"
seed = 1
[model.decoder]
channels = 16
[eval]
long_side = 64
[data]
format = { name = "synthetic", count = 2, width = 64, height = 64, min_height = 8, max_height = 16 }
train = "train"
image_size = 64
[train]
max_steps = 1
batch_size = 1
precision = "fp32"
workers = 0
val_every = 0
"""
GT_LINE = "8,10,40,10,40,20,8,20,hello\n"

#: Fixture name -> kind. Files are named by their kind's suffix, so variants keep it.
FILE_KINDS = {"ckpt": ".safetensors", "recipe": ".toml", "image": ".jpg", "receipt": ".json", "weights": ".safetensors"}
#: The Hugging Face cache every case runs against (offline: no case may reach the network), outside the hashed
#: inputs because `weights import` writes into it; filled by build_fixtures.
HUB_ENV: dict[str, str] = {}
DIR_KINDS = ("data", "preds", "receipt_images")
IMAGE_SUFFIXES = (".jpg", ".png")
LABEL_SUFFIXES = (".txt", ".json")

#: Paths the kernel refuses even to root: a file nobody may read, a folder nobody may list, a folder nobody may
#: create files in. Used only when chmod does not deny (running as root); probed before use.
ROOT_UNREADABLE_FILE = Path("/proc/sys/vm/compact_memory")
ROOT_UNLISTABLE_DIR = Path("/proc/1/map_files")
ROOT_READ_ONLY_DIR = Path("/sys")

# ------------------------------------------------------------------------------------------------ commands


def leaf_commands() -> dict[str, click.Command]:
    """Every runnable command by its full name ('recipe check'), imported from ``dbtk.cli.COMMANDS``."""
    found: dict[str, click.Command] = {}

    def walk(name: str, command: click.Command) -> None:
        if isinstance(command, click.Group):
            for sub_name, sub in command.commands.items():
                walk(f"{name} {sub_name}", sub)
        else:
            found[name] = command

    for name, target in sorted(COMMANDS.items()):
        module, _, attr = target.partition(":")
        walk(name, getattr(importlib.import_module(module), attr))
    return found


#: One or more valid invocations per command, by parameter name. ``{name}`` is a fixture, ``{out}`` the case's
#: own empty folder. A slot is mutated in the first baseline that sets it (or added to the first one).
BASELINES: dict[str, list[dict[str, str | list[str] | bool]]] = {
    "clean-data": [
        {"src": "{data}", "check": True},
        {"src": "{data}", "out": "{out}/clean"},
        {"src": "{receipt_images}", "annotations": "{receipt}", "check": True},
    ],
    "convert": [
        {"src": "{data}", "format_name": "icdar2015", "to_format": "coco", "out": "{out}/converted"},
        {"src": "{receipt_images}", "annotations": "{receipt}", "format_name": "receipt-json", "to_format": "icdar2015", "out": "{out}/converted"},
    ],
    "doctor": [{"as_json": True}, {"as_json": True, "recipe_path": "{recipe}", "overrides": ["train.lr=0.002"]}],
    "eval": [
        {"checkpoint": "{ckpt}", "data": "{data}", "device": "cpu"},
        {"pred_dir": "{preds}", "data": "{data}"},
        {"pred_dir": "{preds}", "data": "{receipt_images}", "annotations": "{receipt}"},
    ],
    "export": [
        {"checkpoint": "{ckpt}", "out": "{out}/model.safetensors"},
        {"checkpoint": "{ckpt}", "out": "{out}/model.onnx", "dynamic": False, "size": "64", "batch": "1", "opset": "17"},
        {"checkpoint": "{ckpt}", "out": "{out}/bundle.safetensors", "check": True, "images": ["{image}"]},
        {"checkpoint": "{ckpt}", "out": "{out}/checked.safetensors", "check": True, "data": "{data}"},
    ],
    "models": [{"recipe": "{recipe}", "size": ["64", "64"]}],
    "plugins": [{}],
    "predict": [{"checkpoint": "{ckpt}", "images": ["{image}"], "out_dir": "{out}/pred", "device": "cpu"}],
    "profile-imports": [{"commands": ["plugins"], "top": "3"}],
    "recipe check": [{"path": "{recipe}", "no_import": True}],
    "recipe keys": [{}],
    "serve": [{"model": "{ckpt}", "port": "0", "device": "cpu", "check": True}],
    "train": [{"recipe_path": "{recipe}", "out_dir": "{out}/run", "device": "cpu"}],
    "weights fetch": [{"names": ["{tag}"]}],
    "weights import": [{"file": "{weights}", "tag": "{tag}"}],
    "weights list": [{}],
}


def _reader_names() -> list[str]:
    from dbtk.registry import registry

    return sorted(entry.name for entry in registry.entries() if entry.kind == "dataset")


#: Free-text parameters the table knows, by name: what each must refuse ("error") or may accept ("survive"),
#: or which kind of path it takes. Anything else untyped fails test_every_slot_has_hostile_values.
TEXT: dict[str, list[tuple[str, str, str]] | tuple[str, str]] = {
    "overrides": [("unknown-key", "no.such.key=1", "error"), ("bad-type", "train.batch_size=abc", "error"),
                  ("nan", "postprocess.box_thresh=nan", "error"), ("no-equals", "no-equals-sign", "error")],
    "format_name": [*((f"reader-{name}", name, "survive") for name in _reader_names()), ("bogus", "no-such-format", "error")],
    "device": [("bogus", "no-such-device", "error"), ("absent-gpu", "cuda:99", "error")],
    "commands": [("bogus", "no-such-command", "error")],
    "host": [("bogus", "no-such-host.invalid", "error"), ("not-here", "203.0.113.7", "error")],  # serve --host
    "names": [("bogus", "no-such-architecture", "error"), ("uncached", "resnet18.tv_in1k", "error")],  # weights fetch, offline
    "tag": [("bogus", "no-such-architecture.a1", "error")],  # weights import --tag
    "resume": ("input", "ckpt"),  # train --resume [CHECKPOINT]
    "run_dir": ("output", "folder"),  # doctor --out
}


# ------------------------------------------------------------------------------------------------ values
@dataclass(frozen=True)
class Variant:
    """A hostile path and whether the command must refuse it."""

    label: str
    expect: str  # "error": exit 1/2 with one error line; "survive": that or exit 0

    def expectation(self, kind: str) -> str:
        # An empty recipe file is the all-defaults recipe, valid by design (docs/recipes.md).
        return "survive" if (kind, self.label) == ("recipe", "empty") else self.expect


FILE_VARIANTS = [
    Variant("missing", "error"), Variant("under-a-file", "error"), Variant("folder-instead", "error"),
    Variant("empty", "error"), Variant("garbage", "error"), Variant("truncated", "error"),
    Variant("unreadable", "error"), Variant("non-finite", "survive"), Variant("other-kind", "error"),
]
DIR_VARIANTS = [
    Variant("missing", "error"), Variant("under-a-file", "error"), Variant("file-instead", "error"),
    Variant("empty", "error"), Variant("unreadable", "error"), Variant("no-images", "error"),
    Variant("no-labels", "error"), Variant("non-finite", "survive"), Variant("unreadable-label", "error"),
    Variant("unreadable-images", "error"), Variant("garbage-images", "survive"),
]
OUTPUT_VARIANTS = [Variant("under-a-file", "error"), Variant("read-only", "error"), Variant("kind-mismatch", "error")]
NUMBERS = {
    "int": [("negative", "-1"), ("zero", "0"), ("huge", str(2**63)), ("fraction", "1.5"), ("text", "abc")],
    "float": [("negative", "-1"), ("zero", "0"), ("huge", "1e308"), ("nan", "nan"), ("inf", "inf"), ("-inf", "-inf"), ("text", "abc")],
}


def _applies(kind: str, variant: str) -> bool:
    """Variants that make sense for a fixture kind (a truncated TOML may still be valid; a recipe has no images)."""
    if kind in FILE_KINDS:
        suffix = FILE_KINDS[kind]
        return {"truncated": suffix in (".safetensors", ".jpg"), "non-finite": suffix in (".toml", ".json")}.get(variant, True)
    has_images = kind in ("data", "receipt_images")
    has_labels = kind in ("data", "preds")
    return {"no-images": has_images, "unreadable-images": kind == "data", "garbage-images": has_images,
            "no-labels": has_labels, "non-finite": has_labels, "unreadable-label": has_labels}.get(variant, True)


def _number_kind(param_type: click.ParamType) -> str | None:
    if isinstance(param_type, click.types.IntParamType):
        return "int"
    if isinstance(param_type, click.types.FloatParamType):
        return "float"
    return None


def numeric_kind(param: click.Parameter) -> str | None:
    """'int' or 'float' for a numeric parameter (a tuple of numbers counts by its members)."""
    if isinstance(param.type, click.Tuple):
        kinds = {_number_kind(t) for t in param.type.types}
        return kinds.pop() if len(kinds) == 1 else None
    return _number_kind(param.type)


def refuses(param: click.Parameter, value: str) -> bool:
    """Whether the parameter's own type rejects the value at parse time (its declared range)."""
    values = (value,) * param.nargs if isinstance(param.type, click.Tuple) else value
    try:
        param.type.convert(values, param, None)
    except click.BadParameter:
        return True
    return False


def has_upper_bound(param: click.Parameter) -> bool:
    types = param.type.types if isinstance(param.type, click.Tuple) else [param.type]
    return all(isinstance(t, (click.IntRange, click.FloatRange)) and t.max is not None for t in types)


# ------------------------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    command: str
    slot: str  # the option ('--out') or argument ('CHECKPOINT')
    label: str
    argv: tuple[str, ...]  # with {fixture} and {out} placeholders
    expect: str
    skip: str = ""  # a reason not to run it (a value with no upper bound: it would really run)

    @property
    def id(self) -> str:
        return f"{self.command}|{self.slot}|{self.label}"


def slot_name(param: click.Parameter) -> str:
    return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name


def render(command: click.Command, values: dict[str, str | list[str] | bool]) -> list[str]:
    """The argument list for ``values`` (by parameter name), in the command's own parameter order."""
    argv: list[str] = []
    for param in command.params:
        if param.name not in values:
            continue
        value = values[param.name]
        if isinstance(param, click.Argument):
            argv += value if isinstance(value, list) else [value]
        elif isinstance(value, bool):
            flags = param.opts if value else param.secondary_opts
            argv += flags[:1]
        else:
            for item in value if param.multiple else [value]:
                argv += [param.opts[0], *(item if isinstance(item, list) else [item])]
    return argv


def _path_role(param: click.Parameter, baseline_value: object) -> tuple[str, str] | None:
    """('input', fixture kind) or ('output', 'file'|'folder') for a path slot; None if not a path."""
    if isinstance(param.type, click.Path):
        fixture = baseline_value[0] if isinstance(baseline_value, list) else baseline_value
        if isinstance(fixture, str) and re.fullmatch(r"\{\w+\}", fixture) and fixture != "{out}":
            return "input", fixture[1:-1]
        if param.type.exists:
            return "input", "unknown"
        return "output", "file" if not param.type.dir_okay else "folder"
    text = TEXT.get(param.name)
    return text if isinstance(text, tuple) else None


def slot_values(command: str, param: click.Parameter, baseline_value: object) -> list[tuple[str, list[str], str, str]]:
    """(label, value tokens, expectation, skip reason) for one slot."""
    role = _path_role(param, baseline_value)
    if role is not None:
        direction, kind = role
        if kind == "unknown":
            return []  # an input no baseline sets: test_every_slot_has_hostile_values asks for one
        if direction == "input":
            variants = FILE_VARIANTS if kind in FILE_KINDS else DIR_VARIANTS
            return [(v.label, [f"{{{kind}@{v.label}}}"], v.expectation(kind), "") for v in variants if _applies(kind, v.label)]
        return [(v.label, [f"{{output@{kind}@{v.label}}}"], v.expect, "") for v in OUTPUT_VARIANTS]
    number = numeric_kind(param)
    if number is not None:
        cases = []
        for label, value in NUMBERS[number]:
            expect = "error" if refuses(param, value) else "survive"
            skip = "no upper bound: the command would really run with it" if label == "huge" and expect == "survive" else ""
            cases.append((label, [value] * (param.nargs if param.nargs > 1 else 1), expect, skip))
        return cases
    if isinstance(param.type, click.Choice):
        return [("bogus-choice", ["no-such-choice"], "error", "")]
    if isinstance(param, click.Option) and param.is_flag:
        return []
    text = TEXT.get(param.name)
    return [(label, [value], expect, "") for label, value, expect in text] if isinstance(text, list) else []


def generate() -> list[Case]:
    """Every case of the table."""
    cases: list[Case] = []
    for name, command in leaf_commands().items():
        baselines = BASELINES.get(name)
        if not baselines:
            continue  # test_every_command_has_a_baseline fails instead
        for param in command.params:
            index = next((i for i, b in enumerate(baselines) if param.name in b), 0)
            baseline = baselines[index]
            for label, tokens, expect, skip in slot_values(name, param, baseline.get(param.name)):
                values = dict(baseline)
                values[param.name] = tokens if param.nargs != 1 or param.multiple else tokens[0]
                argv = (*name.split(), *render(command, values))
                cases.append(Case(name, slot_name(param), label, argv, expect, skip))
    return cases


def in_default_run(cases: list[Case]) -> set[str]:
    """The CI part: per slot one value it must refuse (fixed by a hash of the slot's name), plus the first case of
    every value label, so every slot and every kind of hostile value runs on every push."""
    chosen: set[str] = set()
    by_slot: dict[tuple[str, str], list[Case]] = {}
    for case in cases:
        if not case.skip:
            by_slot.setdefault((case.command, case.slot), []).append(case)
    for (command, slot), group in by_slot.items():
        refused = [case for case in group if case.expect == "error"] or group
        chosen.add(refused[zlib.crc32(f"{command}|{slot}".encode()) % len(refused)].id)
    seen: set[str] = set()
    for case in cases:
        if not case.skip and case.label not in seen:
            seen.add(case.label)
            chosen.add(case.id)
    return chosen


CASES = generate()
DEFAULT_RUN = in_default_run(CASES)


def _params() -> list[object]:
    params = []
    for case in CASES:
        marks = [] if case.id in DEFAULT_RUN else [pytest.mark.slow]
        if case.skip:
            marks.append(pytest.mark.skip(reason=case.skip))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


# ------------------------------------------------------------------------------------------------ fixture files
def _denies(action: str, path: Path) -> bool:
    """Whether ``action`` ('read', 'list' or 'write') on ``path`` really raises OSError for this user."""
    try:
        if action == "read":
            with open(path, "rb") as stream:
                stream.read(1)
        elif action == "list":
            os.listdir(path)
        else:
            probe = path / "dbtk-write-probe"
            probe.mkdir()
            probe.rmdir()
    except OSError:
        return True
    return False


def _unreadable_file(path: Path) -> Path | None:
    path.write_text("x")
    path.chmod(0)
    if _denies("read", path):
        return path
    path.unlink()
    if ROOT_UNREADABLE_FILE.exists():
        path.symlink_to(ROOT_UNREADABLE_FILE)
        if _denies("read", path):
            return path
    return None


def _unlistable_dir(path: Path) -> Path | None:
    path.mkdir()
    path.chmod(0)
    if _denies("list", path):
        return path
    path.chmod(0o755)
    path.rmdir()
    path.symlink_to(ROOT_UNLISTABLE_DIR, target_is_directory=True)
    return path if _denies("list", path) else None


def _read_only_dir(root: Path) -> Path | None:
    folder = root / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if _denies("write", folder):
        return folder
    return ROOT_READ_ONLY_DIR if _denies("write", ROOT_READ_ONLY_DIR) else None


def _non_finite(text: str) -> str:
    return re.sub(r"(?<![\w.])\d+(\.\d+)?(?![\w.])", "nan", text)


def _garbage(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def build_fixtures(root: Path) -> dict[str, str]:
    """Every ``{name}`` the cases use: the valid fixtures and each one's hostile variants."""
    import torch

    from dbtk import recipe as recipes
    from dbtk.io.checkpoint import save_weights
    from dbtk.models.builder import build_model
    from tests.data_fixtures import jpeg_bytes, text_image, write_icdar

    valid = root / "valid"
    valid.mkdir()
    image = jpeg_bytes(text_image(64, 48))
    paths: dict[str, Path | None] = {
        "recipe": valid / "recipe.toml",
        "ckpt": valid / "model.safetensors",
        "image": valid / "page.jpg",
        "receipt": valid / "receipt.json",
        "data": write_icdar(valid / "data", {"page.jpg": (image, GT_LINE)}),
        "preds": valid / "preds",
        "receipt_images": valid / "receipt_images",
    }
    paths["weights"] = valid / "resnet18.safetensors"
    paths["recipe"].write_text(RECIPE)
    _hub_cache(root.parent / f"{root.name}-hub", paths["weights"])
    torch.manual_seed(0)
    recipe = recipes.loads(RECIPE)
    save_weights(paths["ckpt"], build_model(recipe.model), recipe)
    paths["image"].write_bytes(image)
    paths["receipt"].write_text('{"images": {"page.jpg": {"words": {"1": {"points": [[8, 10], [40, 10], [40, 20], [8, 20]], "transcription": "hi"}}}}}\n')
    paths["preds"].mkdir()
    (paths["preds"] / "res_page.txt").write_text("8,10,40,10,40,20,8,20,0.9\n")
    paths["receipt_images"].mkdir()
    (paths["receipt_images"] / "page.jpg").write_bytes(image)

    afile = root / "afile"
    afile.write_text("a regular file\n")
    hostile = root / "hostile"
    hostile.mkdir()
    for kind in FILE_KINDS:
        source = paths[kind]
        folder = hostile / kind
        folder.mkdir()
        other = list(FILE_KINDS)[(list(FILE_KINDS).index(kind) + 1) % len(FILE_KINDS)]
        variants: dict[str, Path | None] = {
            "missing": folder / "missing" / source.name,
            "under-a-file": afile / source.name,
            "other-kind": paths[other],
        }
        for label in ("folder-instead", "empty", "garbage", "truncated", "unreadable", "non-finite"):
            if not _applies(kind, label):
                continue
            path = folder / label / source.name
            path.parent.mkdir()
            if label == "folder-instead":
                path.mkdir()
            elif label == "empty":
                path.write_bytes(b"")
            elif label == "garbage":
                path.write_bytes(_garbage(4096, zlib.crc32(kind.encode())))
            elif label == "truncated":
                data = source.read_bytes()
                path.write_bytes(data[: len(data) // 2])
            elif label == "unreadable":
                path = _unreadable_file(path)
            else:
                path.write_text(_non_finite(source.read_text()))
            variants[label] = path
        for label, path in variants.items():
            paths[f"{kind}@{label}"] = path
    for kind in DIR_KINDS:
        source = paths[kind]
        folder = hostile / kind
        folder.mkdir()
        variants = {"missing": folder / "missing" / source.name, "under-a-file": afile / source.name, "file-instead": afile}
        (folder / "empty").mkdir()
        variants["empty"] = folder / "empty"
        variants["unreadable"] = _unlistable_dir(folder / "unreadable")
        for label in ("no-images", "no-labels", "non-finite", "unreadable-label", "unreadable-images", "garbage-images"):
            if not _applies(kind, label):
                continue
            copy = folder / label
            shutil.copytree(source, copy)
            files = sorted(p for p in copy.rglob("*") if p.is_file())
            images = [p for p in files if p.suffix in IMAGE_SUFFIXES]
            labels = [p for p in files if p.suffix in LABEL_SUFFIXES]
            variants[label] = copy
            if label == "no-images":
                for p in images:
                    p.unlink()
            elif label == "no-labels":
                for p in labels:
                    p.unlink()
            elif label == "non-finite":
                for p in labels:
                    p.write_text(_non_finite(p.read_text()))
            elif label == "unreadable-label" and labels:
                labels[0].unlink()
                variants[label] = copy if _unreadable_file(labels[0]) else None
            elif label == "unreadable-images" and (copy / "images").is_dir():
                shutil.rmtree(copy / "images")
                variants[label] = copy if _unlistable_dir(copy / "images") else None
            elif label == "garbage-images":
                for i, p in enumerate(images):
                    p.write_bytes(_garbage(2048, i))
        for label, path in variants.items():
            paths[f"{kind}@{label}"] = path
    adir = root / "adir"
    adir.mkdir()
    read_only = _read_only_dir(root)
    for kind, name in (("file", "out.json"), ("folder", "out")):
        paths[f"output@{kind}@under-a-file"] = afile / name
        paths[f"output@{kind}@read-only"] = read_only / f"dbtk-table-{name}" if read_only else None
        paths[f"output@{kind}@kind-mismatch"] = adir if kind == "file" else afile
    return {"tag": TAG, **{name: str(path) if path is not None else "" for name, path in paths.items()}}


def _hub_cache(home: Path, weights: Path) -> None:
    """An offline hub cache holding TAG (random weights), and the same weights as a file to import."""
    import timm
    import torch
    from safetensors.torch import save_file

    from tests.test_weights import hub_layout, safetensors_bytes

    torch.manual_seed(7)
    state = {k: v.clone() for k, v in timm.create_model("resnet18").state_dict().items()}
    hub_layout(home, TAG, {"model.safetensors": safetensors_bytes(state)})
    save_file(state, str(weights), metadata={"format": "pt"})
    HUB_ENV.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    inputs = tmp_path_factory.mktemp("cli-table-inputs")
    yield inputs, build_fixtures(inputs)
    for path in inputs.rglob("*"):  # let pytest clean up what was chmod-ed
        with contextlib.suppress(OSError):
            if not path.is_symlink():
                path.chmod(0o755)


# ------------------------------------------------------------------------------------------------ running
#: sha256 by (path, size, mtime, ctime): a file whose status is unchanged is not read again (ctime cannot be set
#: back from user space, so any write shows).
_HASHES: dict[tuple[str, int, int, int], str] = {}


def _hash(path: Path) -> str:
    status = path.stat()
    key = (str(path), status.st_size, status.st_mtime_ns, status.st_ctime_ns)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _HASHES[key]


def snapshot(root: Path) -> dict[str, str]:
    """Every file, folder and link under ``root`` with its bytes' hash (links by target, never followed)."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            relative = str(path.relative_to(root))
            if path.is_symlink():
                found[relative] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[relative] = "dir"
            else:
                try:
                    found[relative] = _hash(path)
                except OSError as exc:  # the chmod-ed unreadable variants (as a normal user)
                    found[relative] = f"unreadable:{path.stat().st_size}:{exc.errno}"
    return found


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    problems: list[str] = field(default_factory=list)


def run_case(argv: list[str], cwd: Path, timeout: float = 300) -> Outcome:
    env = {k: v for k, v in os.environ.items() if k != "DBTK_DEBUG"}
    env.update(NO_COLOR="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])), **HUB_ENV)
    with subprocess.Popen([sys.executable, "-m", "dbtk", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            stdout, stderr = proc.communicate()
            return Outcome(-9, stdout, stderr, [f"hung for {timeout:g} s"])
    return Outcome(proc.returncode, stdout, stderr)


def judge(outcome: Outcome, expect: str) -> list[str]:
    """What is wrong with how a case ended (an empty list when nothing is)."""
    problems = list(outcome.problems)
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error:")]
    if "Traceback" in outcome.stderr + outcome.stdout:
        problems.append("traceback")
    if outcome.code == 0:
        if expect == "error":
            problems.append("exit 0 for a value it must refuse")
        elif errors:
            problems.append("exit 0 with an error line")
    elif outcome.code not in (1, 2):
        problems.append(f"exit {outcome.code}")
    elif len(errors) != 1:
        problems.append(f"{len(errors)} error lines, expected 1")
    return problems


def _resolve(argv: tuple[str, ...], values: dict[str, str]) -> list[str]:
    placeholders = [token for arg in argv for token in re.findall(r"\{([\w@-]+)\}", arg)]
    if any(not values.get(name) for name in placeholders):
        pytest.skip("this machine cannot make that path fail (see the module docstring)")
    return [re.sub(r"\{([\w@-]+)\}", lambda m: values[m.group(1)], arg) for arg in argv]


def _run_checked(argv: list[str], inputs: Path, cwd: Path, expect: str) -> tuple[Outcome, list[str]]:
    """Run one invocation; what is wrong with its ending, and every input it changed."""
    before = snapshot(inputs)
    outcome = run_case(argv, cwd)
    after = snapshot(inputs)
    modified = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    problems = judge(outcome, expect)
    if modified:
        problems.append(f"inputs modified: {modified[:5]}")
    return outcome, problems


def _baselines() -> list[object]:
    commands = leaf_commands()
    return [
        pytest.param(name, render(commands[name], values), id=f"{name}#{i}", marks=[] if i == 0 else [pytest.mark.slow])
        for name, baselines in BASELINES.items() if name in commands for i, values in enumerate(baselines)
    ]


@pytest.mark.parametrize(("command", "args"), _baselines())
def test_baseline_succeeds(command: str, args: list[str], fixtures: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Every mutation starts from a valid invocation: it must really succeed, or the table would prove nothing."""
    inputs, names = fixtures
    argv = _resolve((*command.split(), *args), {**names, "out": str(tmp_path)})
    outcome, problems = _run_checked(argv, inputs, tmp_path, "survive")
    assert outcome.code == 0 and not problems, f"dbtk {' '.join(argv)}\n-> exit {outcome.code}: {problems}\n{outcome.stderr[-3000:]}"


@pytest.mark.parametrize("case", _params())
def test_hostile_value(case: Case, fixtures: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    inputs, names = fixtures
    argv = _resolve(case.argv, {**names, "out": str(tmp_path)})
    outcome, problems = _run_checked(argv, inputs, tmp_path, case.expect)
    TALLY["cli table: cases"] += 1
    TALLY["cli table: tracebacks"] += "traceback" in problems
    TALLY["cli table: inputs modified"] += any(p.startswith("inputs modified") for p in problems)
    assert not problems, f"dbtk {' '.join(argv)}\n-> exit {outcome.code}: {problems}\n{outcome.stderr[-3000:]}"


# ------------------------------------------------------------------------------------------------ the table itself
def _slot_params() -> list[object]:
    return [
        pytest.param(name, param, id=f"{name}|{slot_name(param)}")
        for name, command in leaf_commands().items()
        for param in command.params
    ]


def test_every_command_has_a_baseline() -> None:
    missing = sorted(set(leaf_commands()) - set(BASELINES))
    assert not missing, f"commands without a valid invocation in BASELINES: {missing}"


@pytest.mark.parametrize(("command", "param"), _slot_params())
def test_every_slot_has_hostile_values(command: str, param: click.Parameter) -> None:
    if isinstance(param, click.Option) and param.is_flag:
        return
    assert any(case.command == command and case.slot == slot_name(param) for case in CASES), (
        f"the table has no hostile values for '{command} {slot_name(param)}' ({param.type!r}): give it a click type "
        "(Path, IntRange, FloatRange, Choice) or classify it in TEXT"
    )


@pytest.mark.parametrize(("command", "param"), _slot_params())
def test_every_number_has_a_range(command: str, param: click.Parameter) -> None:
    """Every INT/FLOAT option (and tuple of them) is bounded below and above, and refuses nan and inf."""
    number = numeric_kind(param)
    if number is None:
        return
    assert has_upper_bound(param), f"'{command} {slot_name(param)}' has no upper bound ({param.type!r})"
    types = param.type.types if isinstance(param.type, click.Tuple) else [param.type]
    assert all(t.min is not None for t in types), f"'{command} {slot_name(param)}' has no lower bound ({param.type!r})"
    if number == "float":
        assert refuses(param, "nan") and refuses(param, "inf"), f"'{command} {slot_name(param)}' accepts nan or inf"


def test_table_size_and_default_run() -> None:
    """Every slot is in the default run, every value label is too, and the count lands in the tally."""
    slots = {(c.command, c.slot) for c in CASES if not c.skip}
    default = [c for c in CASES if c.id in DEFAULT_RUN]
    assert {(c.command, c.slot) for c in default} == slots
    assert {c.label for c in default} == {c.label for c in CASES if not c.skip}
    TALLY["cli table: generated"] = len(CASES)
    TALLY["cli table: in the default run"] = len(default)
    assert len(CASES) > 200
