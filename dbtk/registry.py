"""Entry-point registry: how recipes' component names become Python objects.

Every component, built-in or third-party, is an entry point in one of the groups below. Listing reads
distribution metadata only (nothing is imported), so ``dbtk plugins``, did-you-mean suggestions and shell
completion stay instant and a broken plugin cannot break them. :meth:`Registry.load` imports a component
on first use and caches it.

This module must not import torch or any other heavy dependency.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from dbtk.errors import RegistryError, did_you_mean

#: Version of the plugin API. A plugin may declare the versions it supports with a module- or object-level
#: ``DBTK_API_VERSIONS = (min, max)`` (inclusive); a component outside the range refuses to load.
API_VERSION = 1

#: Recipe-facing kind (singular, used in messages) -> entry-point group.
GROUPS: dict[str, str] = {
    "encoder": "dbtk.encoders",
    "decoder": "dbtk.decoders",
    "head": "dbtk.heads",
    "loss": "dbtk.losses",
    "logger": "dbtk.loggers",
    "dataset": "dbtk.datasets",
}

#: Keyword arguments dbtk passes to each kind of component itself; a recipe may not set them.
#: decoder/head: the channel count(s) of the stage before; logger: the run folder; dataset: the split location.
PROVIDED: dict[str, tuple[str, ...]] = {
    "encoder": (),
    "decoder": ("in_channels",),
    "head": ("in_channels",),
    "loss": (),
    "logger": ("run_dir",),
    "dataset": ("split",),
}


@dataclass(frozen=True)
class Entry:
    """One registered component as declared in a distribution's metadata."""

    kind: str
    name: str
    value: str  # "module:object"
    dist: str
    dist_version: str

    @property
    def module(self) -> str:
        return self.value.partition(":")[0].strip()

    @property
    def qualified_name(self) -> str:
        return f"{self.dist}:{self.name}"

    def describe(self) -> str:
        return f"{self.kind} '{self.name}' from distribution '{self.dist} {self.dist_version}' ({self.value})"


def _load_object(value: str) -> Any:
    module_name, _, attr_path = value.partition(":")
    obj: Any = importlib.import_module(module_name.strip())
    for attr in filter(None, attr_path.strip().split(".")):
        obj = getattr(obj, attr)
    return obj


@dataclass
class Registry:
    """Index of components by kind and name; import happens only in :meth:`load`."""

    _entries: dict[str, list[Entry]] | None = None
    _loaded: dict[Entry, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ listing (metadata only)
    def _index(self) -> dict[str, list[Entry]]:
        if self._entries is None:
            index: dict[str, list[Entry]] = {kind: [] for kind in GROUPS}
            group_to_kind = {group: kind for kind, group in GROUPS.items()}
            seen_dists: set[str] = set()
            for dist in metadata.distributions():
                dist_name = dist.metadata["Name"] or "<unnamed>"
                # The first copy of a distribution on sys.path is the one Python imports; later copies (an
                # editable install plus a stale build folder, say) are shadowed, not clashing plugins.
                if _normalise(dist_name) in seen_dists:
                    continue
                seen_dists.add(_normalise(dist_name))
                for ep in dist.entry_points:
                    kind = group_to_kind.get(ep.group)
                    if kind is not None:
                        index[kind].append(Entry(kind, ep.name, ep.value, dist_name, dist.version))
            for entries in index.values():
                entries.sort(key=lambda e: (e.name, e.dist))
            self._entries = index
        return self._entries

    def entries(self, kind: str | None = None) -> list[Entry]:
        """All entries of one kind (or of every kind), sorted by name."""
        index = self._index()
        if kind is None:
            return [e for k in GROUPS for e in index[k]]
        return list(index[_check_kind(kind)])

    def names(self, kind: str) -> list[str]:
        return sorted({e.name for e in self.entries(kind)})

    def resolve(self, kind: str, name: str) -> Entry:
        """Find the single entry a recipe name refers to; ``dist:name`` picks one of clashing entries."""
        entries = self.entries(kind)
        dist_part, sep, bare = name.rpartition(":")
        if sep:
            matches = [e for e in entries if e.name == bare and _normalise(e.dist) == _normalise(dist_part)]
        else:
            matches = [e for e in entries if e.name == name]
        if not matches:
            known = self.names(kind)
            listing = ", ".join(known) if known else "none installed"
            raise RegistryError(
                f"unknown {kind} '{name}'{did_you_mean(bare if sep else name, known)}",
                hint=f"registered {kind}s: {listing}; run 'dbtk plugins' to see every component",
            )
        if len(matches) > 1:
            owners = " and ".join(f"'{e.dist}' ({e.value})" for e in matches)
            choices = " or ".join(f"'{e.qualified_name}'" for e in matches)
            raise RegistryError(
                f"{kind} '{name}' is registered by two distributions: {owners}",
                hint=f"name one of them in the recipe as {choices}",
            )
        return matches[0]

    # ------------------------------------------------------------------ loading (imports)
    def load(self, kind: str, name: str) -> Any:
        """Import the component a name refers to, once, with an error that names the plugin at fault."""
        entry = self.resolve(kind, name)
        return self.load_entry(entry)

    def load_entry(self, entry: Entry, *, stdout_to_stderr: bool = True) -> Any:
        """Import an entry once. Whatever a plugin prints while importing goes to stderr, so it cannot corrupt
        a command's machine-readable stdout (``--json``)."""
        if entry in self._loaded:
            return self._loaded[entry]
        import contextlib
        import sys

        redirect = contextlib.redirect_stdout(sys.stderr) if stdout_to_stderr else contextlib.nullcontext()
        try:
            with redirect:
                obj = _load_object(entry.value)
        except Exception as exc:  # a plugin may raise anything at import; report, don't crash the caller
            raise RegistryError(
                f"{entry.describe()} failed to import: {type(exc).__name__}: {exc}",
                hint=f"fix or reinstall '{entry.dist}', or run 'dbtk plugins --check' to see every broken plugin",
            ) from exc
        if not callable(obj):
            raise RegistryError(f"{entry.describe()} is not callable (got {type(obj).__name__})")
        _check_api_version(entry, obj)
        self._loaded[entry] = obj
        return obj

    def build(self, kind: str, spec: Mapping[str, Any], **provided: Any) -> Any:
        """Construct a component from a recipe table (``name`` plus keyword arguments).

        ``provided`` holds arguments dbtk supplies itself (e.g. a decoder's ``in_channels`` from the encoder);
        a recipe may not set those.
        """
        params = dict(spec)
        name = params.pop("name")
        factory = self.load(kind, name)
        check_params(factory, params, kind=kind, name=name, provided=provided)
        return factory(**params, **provided)


def check_params(
    factory: Callable[..., Any],
    params: Mapping[str, Any],
    *,
    kind: str,
    name: str,
    provided: Mapping[str, Any] | Iterable[str] = (),
) -> None:
    """Check recipe keyword arguments against a component's signature before constructing it."""
    provided_names = set(provided)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call itself report
        return
    accepted = {
        p.name: p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    takes_var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    for key in params:
        if key in provided_names:
            raise RegistryError(
                f"parameter '{key}' of {kind} '{name}' is set by dbtk itself; remove it from the recipe"
            )
        if key not in accepted and not takes_var_kwargs:
            settable = [k for k in accepted if k not in provided_names]
            raise RegistryError(
                f"unknown parameter '{key}' for {kind} '{name}'{did_you_mean(key, settable)}",
                hint=f"{kind} '{name}' accepts: {', '.join(settable) or 'no parameters'}",
            )
    missing = [
        k
        for k, p in accepted.items()
        if p.default is inspect.Parameter.empty and k not in params and k not in provided_names
    ]
    if missing:
        raise RegistryError(f"{kind} '{name}' needs parameter '{missing[0]}' in the recipe")


def _check_api_version(entry: Entry, obj: Any) -> None:
    declared = getattr(obj, "DBTK_API_VERSIONS", None)
    if declared is None:
        module = importlib.import_module(entry.module)
        declared = getattr(module, "DBTK_API_VERSIONS", None)
    if declared is None:
        return
    low, high = declared
    if not low <= API_VERSION <= high:
        raise RegistryError(
            f"{entry.describe()} supports dbtk plugin API {low}..{high}, this dbtk provides {API_VERSION}",
            hint=f"upgrade '{entry.dist}' or install a dbtk release that provides API {low}..{high}",
        )


def _check_kind(kind: str) -> str:
    if kind not in GROUPS:
        raise RegistryError(f"unknown component kind '{kind}'{did_you_mean(kind, GROUPS)}")
    return kind


def _normalise(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-").replace(".", "-")


#: The process-wide registry the CLI and builders use. Tests make their own instances.
registry = Registry()


@dataclass(frozen=True)
class LoadStatus:
    """Outcome of importing one component for ``dbtk plugins --check``."""

    ok: bool
    detail: str  # "ok", the import error, or "timed out after N s"
    stdout: str = ""  # anything the plugin printed while importing (it should print nothing)
    timed_out: bool = False

    @property
    def status(self) -> str:
        return "ok" if self.ok else "timed out" if self.timed_out else "broken"


def check_entry(reg: Registry, entry: Entry, timeout: float) -> LoadStatus:
    """Import one component with a time limit, capturing what it prints.

    The import runs in a daemon thread so a plugin that hangs at import is reported as timed out instead of
    hanging the command; stdout is captured so a chatty plugin cannot corrupt ``--json`` output.
    """
    import io
    import sys
    import threading

    outcome: list[LoadStatus] = []

    def attempt() -> None:
        try:
            reg.load_entry(entry, stdout_to_stderr=False)  # stdout is captured here instead
            outcome.append(LoadStatus(True, "ok"))
        except RegistryError as exc:
            cause = exc.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else exc.message
            outcome.append(LoadStatus(False, detail))

    captured = io.StringIO()
    real_stdout = sys.stdout
    sys.stdout = captured
    try:
        worker = threading.Thread(target=attempt, name=f"dbtk-check-{entry.name}", daemon=True)
        worker.start()
        worker.join(timeout)
    finally:
        sys.stdout = real_stdout
    printed = captured.getvalue()
    if not outcome:
        return LoadStatus(False, f"timed out after {timeout:g} s while importing {entry.module}", printed, timed_out=True)
    result = outcome[0]
    return LoadStatus(result.ok, result.detail, printed)
