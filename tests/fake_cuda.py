"""A simulated ``torch`` for the doctor's probes: real cards, real wheels' arch lists, and the ways CUDA fails.

No GPU is needed (nor any machine's driver): :func:`fake_torch` builds an object that the probe's
``torch_report`` reads exactly as it reads torch — ``torch.cuda`` with capabilities, arch list, bf16 with and
without emulation, free memory, failing queries — so every rule and probe path runs in CI on a CPU. For exits a
Python object cannot simulate (SIGILL, SIGSEGV), :func:`write_fake_torch_package` puts a ``torch`` package on
PYTHONPATH that turns itself into such a fake in the probe's own process, or kills it where a scenario says.

This module imports nothing of torch: in the subprocess it *is* torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCENARIO_VARIABLE = "DBTK_FAKE_TORCH"


@dataclass(frozen=True)
class Card:
    name: str  # as torch.cuda.get_device_properties(i).name reports it
    capability: tuple[int, int]
    total_gb: float


CARDS = {
    "RTX 2080": Card("NVIDIA GeForce RTX 2080", (7, 5), 8.0),
    "RTX 3060": Card("NVIDIA GeForce RTX 3060", (8, 6), 12.0),
    "RTX 4090": Card("NVIDIA GeForce RTX 4090", (8, 9), 24.0),
    "T4": Card("Tesla T4", (7, 5), 15.0),
    "V100": Card("Tesla V100-SXM2-16GB", (7, 0), 16.0),
    "A100": Card("NVIDIA A100-SXM4-40GB", (8, 0), 40.0),
    "L4": Card("NVIDIA L4", (8, 9), 22.5),
    "L40S": Card("NVIDIA L40S", (8, 9), 45.0),
    "H100": Card("NVIDIA H100 80GB HBM3", (9, 0), 79.6),
    "B200": Card("NVIDIA B200", (10, 0), 178.0),
    "RTX 5090": Card("NVIDIA GeForce RTX 5090", (12, 0), 31.4),
}

#: ``torch.cuda.PYTORCH_RELEASES_CODE_CC`` of torch 2.14.1 (x86_64 rows; the table in docs/doctor.md is for x86_64,
#: so the fake answers the same on any host).
RELEASES_2_14 = {
    cuda: {"x86_64": set(ccs), "aarch64": set(ccs)}
    for cuda, ccs in {
        "12.6": (50, 60, 70, 75, 80, 86, 90),
        "13.0": (75, 80, 86, 90, 100, 120),
        "13.2": (75, 80, 86, 90, 100, 120),
        "13.4": (75, 80, 86, 90, 100, 120),
    }.items()
}


@dataclass(frozen=True)
class Wheel:
    version: str
    cuda: str
    arch_list: tuple[str, ...]
    source: str  # where this arch list was read
    releases: dict[str, dict[str, set[int]]] | None = None  # torch's own table of its release's builds, where it has one


SM_50_TO_90 = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
WHEELS = {
    "2.0.1+cu118": Wheel("2.0.1+cu118", "11.8", ("sm_37", "sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"), "pytorch/pytorch#95648"),
    "2.11.0+cu126": Wheel("2.11.0+cu126", "12.6", SM_50_TO_90, "pytorch/pytorch#182250"),
    "2.10.0+cu128": Wheel("2.10.0+cu128", "12.8", ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"), "pytorch/pytorch#182250"),
    "2.11.0+cu128": Wheel("2.11.0+cu128", "12.8", ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"), "pytorch/pytorch#182250"),
    "2.8.0+cu129": Wheel("2.8.0+cu129", "12.9", ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"),
                         "pytorch/pytorch#158700; .ci/manywheel/build_cuda.sh (12.9: 7.0;...;12.0+PTX)"),
    "2.14.1+cu126": Wheel("2.14.1+cu126", "12.6", SM_50_TO_90, "torch 2.14.1's PYTORCH_RELEASES_CODE_CC", RELEASES_2_14),
    "2.14.1+cu130": Wheel("2.14.1+cu130", "13.0", ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"),
                          "torch.cuda.get_arch_list() of the installed 2.14.1+cu130", RELEASES_2_14),
    # Source builds (TORCH_CUDA_ARCH_LIST="8.0;9.0a" and "8.0;9.0+PTX"): versions on no pytorch.org index.
    "source 8.0;9.0a": Wheel("2.14.0a0+git5f0c6e1", "12.8", ("sm_80", "sm_90a"), "TORCH_CUDA_ARCH_LIST", RELEASES_2_14),
    "source 8.0;9.0+PTX": Wheel("2.14.0a0+git5f0c6e1", "12.8", ("sm_80", "sm_90", "compute_90"), "TORCH_CUDA_ARCH_LIST", RELEASES_2_14),
}


class Properties(SimpleNamespace):
    """``torch.cuda.get_device_properties(i)``: the fields the probe reads."""


@dataclass
class FakeCuda:
    """``torch.cuda`` on a machine with ``cards``, running ``wheel``.

    ``errors`` maps a method name (``device_count``, ``get_device_properties``, ``mem_get_info``, ``is_available``)
    to the message of the RuntimeError it raises; ``crash`` maps one to the signal that kills the process there.
    ``free_share`` of each card's memory is free; ``bf16_kwarg=False`` is a torch whose ``is_bf16_supported``
    has no ``including_emulation`` argument.
    """

    wheel: Wheel
    cards: list[Card]
    available: bool = True
    init_error: str = ""
    free_share: float = 0.9
    bf16_kwarg: bool = True
    errors: dict[str, str] = field(default_factory=dict)
    crash: dict[str, str] = field(default_factory=dict)
    current: int = 0

    @property
    def PYTORCH_RELEASES_CODE_CC(self) -> dict[str, dict[str, set[int]]] | None:  # noqa: N802 - torch's name
        return self.wheel.releases

    def _enter(self, method: str) -> None:
        if method in self.crash:
            die(self.crash[method])
        if method in self.errors:
            raise RuntimeError(self.errors[method])

    def is_available(self) -> bool:
        self._enter("is_available")
        return self.available

    def init(self) -> None:
        if self.init_error:
            raise RuntimeError(self.init_error)

    def get_arch_list(self) -> list[str]:
        return list(self.wheel.arch_list) if self.available else []

    def device_count(self) -> int:
        self._enter("device_count")
        return len(self.cards)

    def get_device_properties(self, index: int) -> Properties:
        self._enter("get_device_properties")
        card = self.cards[index]
        major, minor = card.capability
        return Properties(name=card.name, major=major, minor=minor, total_memory=int(card.total_gb * 2**30),
                          uuid=f"0000000{index}-5c3b-11ee-8c99-0242ac120002")

    def mem_get_info(self, index: int) -> tuple[int, int]:
        self._enter("mem_get_info")
        total = int(self.cards[index].total_gb * 2**30)
        return int(total * self.free_share), total

    @contextlib.contextmanager
    def device(self, index: int) -> Iterator[None]:
        previous, self.current = self.current, index
        try:
            yield
        finally:
            self.current = previous

    def current_device(self) -> int:
        return self.current

    def is_bf16_supported(self, *args: bool, **kwargs: bool) -> bool:
        """As torch: compute 8.0+ natively; anything else only by emulation, which the default counts."""
        if not self.bf16_kwarg and kwargs:
            raise TypeError("is_bf16_supported() got an unexpected keyword argument 'including_emulation'")
        including_emulation = (args or [kwargs.get("including_emulation", True)])[0]
        return self.available and (self.cards[self.current].capability[0] >= 8 or including_emulation)


def fake_torch(wheel: Wheel, cards: list[Card], *, nccl: bool = True, driver_cuda: int | None = 13000, **cuda: Any) -> SimpleNamespace:
    """The parts of ``torch`` the torch probe reads; ``cuda`` options go to :class:`FakeCuda`."""

    def driver_version() -> int:
        if driver_cuda is None:
            raise RuntimeError("CUDA driver not found")
        return driver_cuda

    return SimpleNamespace(
        __version__=wheel.version,
        version=SimpleNamespace(cuda=wheel.cuda, hip=None),
        backends=SimpleNamespace(cudnn=SimpleNamespace(is_available=lambda: True, version=lambda: 91002)),
        cuda=FakeCuda(wheel, list(cards), **cuda),
        distributed=SimpleNamespace(is_available=lambda: True, is_nccl_available=lambda: nccl),
        _C=SimpleNamespace(_cuda_getDriverVersion=driver_version),
    )


def nvidia_smi(driver: str = "580.95.05", processes: str = "") -> Any:
    """A runner for the probe's ``nvidia-smi`` calls: the driver version, and ``processes`` (CSV lines of
    ``gpu_uuid, pid, process_name, used_memory [MiB]``) for the compute-apps query."""

    def run(command: list[str]) -> str | None:
        if command[0] != "nvidia-smi":
            return None
        return processes if any(part.startswith("--query-compute-apps") for part in command) else f"{driver}\n"

    return run


def die(signal_name: str) -> None:
    """Kill this process with ``signal_name`` (no core file), as a crash in native code would."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.stderr.flush()
    os.kill(os.getpid(), getattr(signal, signal_name))


# ------------------------------------------------------------------------------------------------ subprocess level
def write_fake_torch_package(folder: Path, scenario: dict[str, Any]) -> dict[str, str]:
    """Write a ``torch`` package into ``folder`` that becomes :func:`fake_torch` for ``scenario`` when imported;
    return the environment that puts it first on the path of a child process.

    ``scenario``: ``wheel`` and ``cards`` (keys of WHEELS and CARDS), ``crash_at_import`` (a signal name),
    ``smoke_error`` (what the GPU smoke test raises), and FakeCuda options (``errors``, ``crash``, ...).
    """
    package = folder / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from tests.fake_cuda import become_torch\n\nbecome_torch(__name__)\n")
    path = os.pathsep.join(filter(None, [str(folder), str(REPO), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, SCENARIO_VARIABLE: json.dumps(scenario)}


def become_torch(module_name: str) -> None:
    """Turn the importing module into the fake torch of the scenario in the environment (or die importing)."""
    scenario = dict(json.loads(os.environ[SCENARIO_VARIABLE]))
    if "crash_at_import" in scenario:
        die(scenario.pop("crash_at_import"))
    smoke_error = scenario.pop("smoke_error", "the simulated GPU runs no kernels")
    wheel, cards = WHEELS[scenario.pop("wheel")], [CARDS[name] for name in scenario.pop("cards")]
    fake = fake_torch(wheel, cards, **scenario)

    def manual_seed(_seed: int) -> None:  # the smoke test's first call: the simulated GPU fails it as configured
        raise RuntimeError(smoke_error)

    vars(sys.modules[module_name]).update(vars(fake), manual_seed=manual_seed)
