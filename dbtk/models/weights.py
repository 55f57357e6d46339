"""Encoder weights: local files, and timm's published weights in the Hugging Face hub cache. Never plain unpickling.

A local file is read with safetensors, or as a torch file with ``weights_only=True``. Published weights are
named by a timm pretrained tag (``resnet18.a1_in1k``; ``pretrained = true`` takes the architecture's default
tag); timm's pretrained config maps the tag to a hub repository (``timm/resnet18.a1_in1k``), whose
``model.safetensors`` lives in the hub cache in the hub's own layout::

    HUB_CACHE/models--timm--resnet18.a1_in1k/refs/main                  (the snapshot's revision)
    HUB_CACHE/models--timm--resnet18.a1_in1k/snapshots/REV/model.safetensors

so a copy fetched by ``dbtk weights fetch``, by timm or by ``huggingface-cli download`` is the same copy. The cache
folder and offline mode follow huggingface_hub's environment variables (``HF_HUB_CACHE``, ``HF_HOME``,
``HF_HUB_OFFLINE``), read when a function runs rather than when a module is imported, so a process (or a test)
that sets them late is honoured. Hub weights are loaded from ``model.safetensors`` only: a cached repository that
holds nothing but ``pytorch_model.bin`` (a pickle) is refused with the command that converts it.

torch, timm and huggingface_hub are imported inside the functions that need them: ``dbtk weights list`` reads the
cache without them.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dbtk.errors import DbtkError, did_you_mean

if TYPE_CHECKING:
    import torch

#: Wrappers that training scripts put around state dicts, and prefixes DDP/EMA/feature wrappers add to keys.
_NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
_KEY_PREFIXES = ("module.", "model.", "_orig_mod.")

#: The file dbtk loads from a hub snapshot, and the pickled files it refuses to load (timm's HF_WEIGHTS_NAME etc.).
HUB_FILE = "model.safetensors"
PICKLED_FILES = ("pytorch_model.bin", "pytorch_model.pth", "model.pth", "open_clip_pytorch_model.bin")
#: Suffixes that make a missing ``pretrained`` path a missing file rather than a mistyped tag.
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar", ".npz")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "ON", "YES", "TRUE"}


# ------------------------------------------------------------------------------------------------ local files
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file (``.safetensors``, or a torch checkpoint loaded with weights_only)."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise DbtkError(
            f"weights file not found: {Path(path).absolute()}",
            hint="point 'pretrained' at a local .safetensors or .pth file, at a timm pretrained tag "
            "(e.g. resnet18.a1_in1k), or set it to true (the architecture's default tag) or false",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with forbidden globals, ...
        # Not torch's own text: it goes on to advise loading with weights_only=False, i.e. running the pickle.
        raise DbtkError(f"cannot read weights file {path.absolute()}: not a readable safetensors file or torch file of "
                        f"tensors ({type(exc).__name__})",
                        hint="give a .safetensors file, or a torch checkpoint holding tensors only") from exc
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DbtkError(f"{path} does not hold a state dict of tensors")
    return state


def features_from_file(arch: str, source: Path, **kwargs: object) -> torch.nn.Module:
    """timm's feature extractor for ``arch`` with the weights of the local file ``source``.

    The file gets exactly the check and the loading that ``dbtk weights import`` gives it (:func:`create_features`):
    a file of another architecture (resnet34's tensors hold all of resnet18's, and more) or a damaged one is refused
    with its missing, unexpected and wrongly shaped tensors, never loaded half-way. Wrapper prefixes (DDP's
    ``module.``, ``model.``, ``torch.compile``'s ``_orig_mod.``) are removed first; timm drops the classifier.
    """
    import tempfile

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as folder:
        converted = Path(folder) / HUB_FILE
        save_file(_unwrapped(arch, read_state_dict(source)), str(converted), metadata={"format": "pt"})
        try:
            return create_features(arch, converted, **kwargs)
        except DbtkError as exc:  # name the user's file, not the temporary copy
            raise DbtkError(exc.message.replace(str(converted), str(source)),
                            hint=f"the weights must come from timm's '{arch}' (the encoder's arch), or set pretrained = false") from None


def _unwrapped(tag: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the prefixes that training wrappers add (:data:`_KEY_PREFIXES`) removed from every key that
    the timm model ``tag`` does not hold as written; tensors made contiguous, as safetensors stores them."""
    import timm
    import torch

    with torch.device("meta"):
        own = set(timm.create_model(tag).state_dict())
    unwrapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = key
        for prefix in _KEY_PREFIXES:
            if name not in own and name.startswith(prefix):
                name = name[len(prefix) :]
        unwrapped[name] = tensor.contiguous()
    return unwrapped


# ------------------------------------------------------------------------------------------------ the hub cache
def hub_cache() -> Path:
    """The hub cache folder, resolved as huggingface_hub resolves it: ``HF_HUB_CACHE``, the legacy
    ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME/hub``, ``XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    folder = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(folder)))


def offline() -> bool:
    """huggingface_hub's offline switch (``HF_HUB_OFFLINE``, or the legacy ``TRANSFORMERS_OFFLINE``)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE


@dataclass(frozen=True)
class HubWeights:
    """timm's published weights for one pretrained tag, and where the hub cache keeps them."""

    tag: str  # timm model name with its pretrained tag: resnet18.a1_in1k
    repo_id: str  # hub repository: timm/resnet18.a1_in1k
    revision: str | None = None  # a revision timm pins (hf_hub_id@REV); None follows refs/main

    @property
    def folder(self) -> Path:
        return hub_cache() / f"models--{self.repo_id.replace('/', '--')}"

    def snapshot(self) -> Path | None:
        """The snapshot folder the cache's ref points to (a pinned commit is its own folder), if any."""
        revision = self.revision or "main"
        if not _COMMIT.match(revision):
            ref = self.folder / "refs" / revision
            if not ref.is_file():
                return None
            revision = ref.read_text(encoding="utf-8").strip()
        snapshot = self.folder / "snapshots" / revision
        return snapshot if snapshot.is_dir() else None

    def cached(self) -> Path | None:
        """The cached ``model.safetensors``, if the cache holds it."""
        snapshot = self.snapshot()
        return snapshot / HUB_FILE if snapshot is not None and (snapshot / HUB_FILE).is_file() else None

    def pickled(self) -> Path | None:
        """A cached pickled weights file (loaded by nobody here; named in the error that asks to convert it)."""
        snapshot = self.snapshot()
        return next((snapshot / name for name in PICKLED_FILES if (snapshot / name).is_file()), None) if snapshot else None


def hub_weights(name: str) -> HubWeights:
    """The published weights timm names ``name``: a tag (``resnet18.a1_in1k``) or an architecture (its default tag)."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(name)
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError:  # timm: "Invalid pretrained tag (x) for arch"
        cfg = None
    if cfg is None:
        if arch in timm.list_models():
            known = timm.list_pretrained(f"{arch}.*")
            raise DbtkError(
                f"timm has no pretrained weights '{name}'{did_you_mean(name, known)}",
                hint=f"tags for {arch}: {', '.join(known)}" if known else f"timm publishes no weights for {arch}: set pretrained = false",
            )
        raise DbtkError(
            f"unknown timm architecture '{arch}'{did_you_mean(arch, timm.list_models())}",
            hint="list the published weights with: python -c \"import timm; print(timm.list_pretrained('resnet*'))\"",
        )
    if not cfg.hf_hub_id:
        raise DbtkError(
            f"timm publishes '{arch}.{cfg.tag}' outside the Hugging Face hub ({cfg.url or cfg.file or 'no source'})",
            hint="download it yourself and set pretrained to the local file, or import it: dbtk weights import FILE --tag TAG",
        )
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    return HubWeights(f"{arch}.{cfg.tag}" if cfg.tag else arch, repo_id, revision or None)


def pretrained_source(arch: str, pretrained: bool | str | None) -> HubWeights | Path | None:
    """What an encoder's ``pretrained`` names: nothing, a local file, or published weights.

    ``true`` is the architecture's default tag; a string is a file when it exists, and otherwise a tag when its
    last path component is one timm knows (recipes resolve every ``pretrained`` string as a path relative to the
    recipe, so a tag arrives as ``/folder/resnet18.a1_in1k``). The tag must be for ``arch``.
    """
    if pretrained == "":  # an unset shell variable (--set model.encoder.pretrained=$W) is not "no weights"
        raise DbtkError('pretrained = "": give true, false, a timm tag or a weights file')
    if not pretrained:
        return None
    if pretrained is True:
        return hub_weights(arch)
    import timm
    from timm.models import split_model_name_tag

    path = Path(str(pretrained)).expanduser()
    if path.exists() or path.suffix.lower() in _FILE_SUFFIXES or not timm.is_model(split_model_name_tag(path.name)[0]):
        return path  # a file (read_state_dict names a missing one)
    weights = hub_weights(path.name)
    wanted, given = split_model_name_tag(arch)[0], split_model_name_tag(weights.tag)[0]
    if wanted != given:
        raise DbtkError(
            f"pretrained '{path.name}' is for {given}, but the encoder's arch is '{arch}'",
            hint=f"set arch = \"{given}\", or a tag of {wanted}: dbtk weights fetch {wanted}",
        )
    return weights


def locate(weights: HubWeights) -> Path:
    """The cached ``model.safetensors`` of ``weights``, downloaded into the cache first when it is missing and the
    hub may be reached. Offline without a cached copy: one line naming the weights, the cache and the fetch command."""
    cached = weights.cached()
    if cached is not None:
        return cached
    _refuse_pickle(weights)
    if offline():
        raise DbtkError(
            f"no cached weights for {weights.tag} ({weights.repo_id}) in {hub_cache()} and HF_HUB_OFFLINE is set: "
            f"fetch them where the hub can be reached with 'dbtk weights fetch {weights.tag}' (same HF_HOME), then copy the cache"
        )
    return fetch(weights)


def fetch(weights: HubWeights) -> Path:
    """Download ``model.safetensors`` of ``weights`` into the hub cache (nothing else: no pickle is ever fetched)."""
    if offline():
        raise DbtkError(
            f"cannot fetch {weights.tag}: HF_HUB_OFFLINE is set",
            hint="run 'dbtk weights fetch' where the hub can be reached (a login node), with HF_HUB_OFFLINE unset",
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(weights.repo_id, HUB_FILE, revision=weights.revision, cache_dir=hub_cache()))
    except LocalEntryNotFoundError as exc:  # the hub could not be reached (it subclasses EntryNotFoundError: first)
        raise DbtkError(
            f"cannot download {weights.tag} from the Hugging Face hub into {hub_cache()}: {_first_line(exc)}",
            hint=f"without a network, fetch it on a machine that has one ('dbtk weights fetch {weights.tag}') and copy "
            "the cache, or set HF_HUB_OFFLINE=1 to use only what is cached",
        ) from None
    except EntryNotFoundError:
        raise DbtkError(
            f"{weights.repo_id} publishes no {HUB_FILE}, and dbtk loads no pickled weights",
            hint=f"convert a copy you trust: dbtk weights import pytorch_model.bin --tag {weights.tag}",
        ) from None
    except RepositoryNotFoundError:
        raise DbtkError(f"the hub has no repository {weights.repo_id} (named by timm for {weights.tag})") from None
    except (HfHubHTTPError, OSError) as exc:  # an HTTP error, a proxy, a full disk
        raise DbtkError(f"cannot download {weights.tag} into {hub_cache()}: {_first_line(exc)}") from None


def _refuse_pickle(weights: HubWeights) -> None:
    pickled = weights.pickled()
    if pickled is not None:
        raise DbtkError(
            f"the cached {weights.tag} holds only {pickled.name} ({pickled}), a pickle that dbtk never loads",
            hint=f"convert it to safetensors (read with torch's weights_only loader): dbtk weights import {pickled} --tag {weights.tag}",
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def import_file(source: str | Path, weights: HubWeights) -> Path:
    """Put a local weights file into the hub cache as ``weights``' ``model.safetensors`` (converted when it is a
    torch file), after checking that timm loads it into the tag's architecture; returns the cached path.

    The snapshot's revision is derived from the tensors' bytes, so importing the same file twice writes one copy.
    """
    import tempfile

    from safetensors.torch import save_file

    from dbtk.io.atomic import atomic_write

    state = _unwrapped(weights.tag, read_state_dict(source))
    with tempfile.TemporaryDirectory() as folder:
        converted = Path(folder) / HUB_FILE
        save_file(state, str(converted), metadata={"format": "pt"})
        try:
            create_features(weights.tag, converted)
        except DbtkError as exc:  # name the user's file, not the temporary copy
            raise DbtkError(exc.message.replace(str(converted), str(source)), hint=f"is {source} a checkpoint of {weights.tag}?") from None
        payload = converted.read_bytes()
    revision = weights.revision if weights.revision and _COMMIT.match(weights.revision) else hashlib.sha1(payload).hexdigest()
    target = weights.folder / "snapshots" / revision / HUB_FILE
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(payload))
    if revision != weights.revision:
        ref = weights.folder / "refs" / (weights.revision or "main")
        atomic_write(ref, lambda tmp: Path(tmp).write_text(revision, encoding="utf-8"))
    return target


def create_features(tag: str, file: Path, **kwargs: object) -> torch.nn.Module:
    """timm's feature extractor for ``tag`` with weights from a ``.safetensors`` file, loaded by timm itself (its
    key remapping and classifier removal), so hub weights land exactly as ``timm.create_model(pretrained=True)``
    would put them. Only a safetensors file is handed over: timm reads those with safetensors, never unpickling.

    timm loads a feature extractor's weights non-strictly (the classifier is dropped), so a file of another
    architecture would load half-way with a log line; :func:`_misfit` refuses it first.
    """
    import timm

    if file.suffix != ".safetensors":
        raise DbtkError(f"{file}: hub weights are loaded from .safetensors files only")
    hint = f"fetch it again (dbtk weights fetch {tag}) or import the right file (dbtk weights import FILE --tag {tag})"
    try:
        misfit = _misfit(tag, file)
        if not misfit:
            return timm.create_model(tag, pretrained=True, features_only=True, pretrained_cfg_overlay={"file": str(file)}, **kwargs)
    except Exception as exc:  # a damaged file (SafetensorError), or whatever timm's loading raises
        raise DbtkError(f"{file} does not load into {tag}: {_first_line(exc)}", hint=hint) from None
    raise DbtkError(f"{file} does not hold {tag}'s weights: {misfit}", hint=hint)


def _misfit(tag: str, file: Path) -> str:
    """How the tensors of ``file`` differ from the full timm model ``tag`` (built on the meta device: names and
    shapes, no memory), apart from its classifier; empty when they fit."""
    import timm
    import torch
    from safetensors import safe_open

    with torch.device("meta"):
        model = timm.create_model(tag)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    classifier = model.pretrained_cfg.get("classifier") or ()
    heads = tuple(f"{name}." for name in ((classifier,) if isinstance(classifier, str) else classifier))
    with safe_open(str(file), framework="pt") as reader:
        found = {key: tuple(reader.get_slice(key).get_shape()) for key in reader.keys()}
    body = [key for key in expected if not key.startswith(heads)]
    missing = [key for key in body if key not in found and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in found if key not in expected]
    wrong = [key for key in body if key in found and found[key] != expected[key]]
    parts = [
        f"missing {len(missing)} (e.g. {missing[0]})" if missing else "",
        f"unexpected {len(unexpected)} (e.g. {unexpected[0]})" if unexpected else "",
        f"wrong shape {len(wrong)} (e.g. {wrong[0]}: {found[wrong[0]]} vs {expected[wrong[0]]})" if wrong else "",
    ]
    return "; ".join(part for part in parts if part)


# ------------------------------------------------------------------------------------------------ listing
@dataclass(frozen=True)
class CachedModel:
    """One model repository in the hub cache, as ``dbtk weights list`` shows it."""

    repo_id: str
    revision: str | None  # refs/main, when the cache has it
    files: tuple[str, ...]  # weights files of that snapshot
    size: int  # bytes of those files

    @property
    def name(self) -> str:
        """The timm tag for timm's own repositories (what ``pretrained`` takes), the repository id otherwise."""
        org, _, rest = self.repo_id.partition("/")
        return rest if org == "timm" else self.repo_id

    @property
    def loadable(self) -> bool:
        return HUB_FILE in self.files


def cached_models() -> list[CachedModel]:
    """Every model repository in the hub cache that holds weights, sorted by name (an absent cache: none)."""
    cache = hub_cache()
    found = []
    for folder in sorted(cache.glob("models--*")) if cache.is_dir() else []:
        repo_id = folder.name[len("models--") :].replace("--", "/")
        ref = folder / "refs" / "main"
        revision = ref.read_text(encoding="utf-8").strip() if ref.is_file() else None
        snapshots = [folder / "snapshots" / revision] if revision else sorted((folder / "snapshots").glob("*"))
        files = sorted({p.name for s in snapshots for p in s.glob("*") if p.name in (HUB_FILE, *PICKLED_FILES) and p.is_file()})
        if files:
            size = sum((s / name).stat().st_size for s in snapshots for name in files if (s / name).is_file())
            found.append(CachedModel(repo_id, revision, tuple(files), size))
    return found
