"""Doctor rules: probe results (plain dicts) in, findings with a concrete fix out. No torch import here.

Kept apart from the probes so every rule runs on any machine: ``tests/test_doctor.py`` feeds them recorded
results, and ``tests/test_doctor_cards.py`` feeds them what the probes report for a table of real cards against
the arch lists of real torch wheels (through a simulated ``torch.cuda``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from dbtk.doctor.probe import IMPORTING_TORCH, LOW_FREE_SHARE

OK, WARN, FAIL = "ok", "warn", "fail"
#: fp16 overflow steps GradScaler may take while it lowers its initial scale (2**16) to one the gradients fit:
#: each overflow halves the scale, so a healthy run overflows a handful of times and then rarely.
NORMAL_OVERFLOW_STEPS = 16


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ CUDA architectures
#: ``sm_86`` (a cubin: machine code), ``compute_90`` (PTX, compiled by the driver at load time), with an optional
#: ``a`` (arch-specific: that exact GPU only) or ``f`` (family-specific: that major version only) suffix.
ARCH_ENTRY = re.compile(r"^(sm|compute)_(\d+)([af]?)$")
#: Jetson GPUs: integrated, and not binary-compatible with the discrete GPUs of their major version.
INTEGRATED = frozenset({53, 62, 72, 87})
#: Cubins that CUDA 13.2 made run on the Jetson GPUs of their major version too (torch.cuda's
#: ``DEVICE_REQUIREMENT_POST_JETSON_SBSA_UNIFICATION``).
UNIFIED_FROM_CUDA_13_2 = frozenset({70, 80, 86})
#: Compute capability 10.1 (Jetson Thor) was renamed 11.0.
RENAMED = {101: 110}


@dataclass(frozen=True)
class Arch:
    """One entry of ``torch.cuda.get_arch_list()``; ``cc`` is 10 x major + minor (sm_89: 89, sm_100: 100)."""

    ptx: bool
    cc: int
    suffix: str  # "" | "a" | "f"

    @property
    def name(self) -> str:
        return f"{'compute' if self.ptx else 'sm'}_{self.cc}{self.suffix}"


def parse_arch(entry: str) -> Arch | None:
    """``sm_90a`` → Arch(False, 90, 'a'); an entry of another form (a ROCm ``gfx90a``) is None, never an error."""
    match = ARCH_ENTRY.match(entry.strip())
    return Arch(match[1] == "compute", int(match[2]), match[3]) if match else None


def runs_on(arch: Arch, device_cc: int, cuda: tuple[int, int] | None) -> bool:
    """Whether code compiled for ``arch`` runs on a GPU of compute capability ``device_cc`` (torch's own rule,
    ``torch.cuda._code_compatible_with_device``, plus PTX): a cubin runs on its major version's GPUs with an equal
    or higher minor; PTX is compiled forward to any newer GPU; ``a`` entries run on exactly their GPU, ``f`` PTX
    on its major version only."""
    code, device = RENAMED.get(arch.cc, arch.cc), RENAMED.get(device_cc, device_cc)
    if arch.suffix == "a":
        return device == code
    same_major = device // 10 == code // 10 and device % 10 >= code % 10
    if arch.ptx:
        return same_major if arch.suffix == "f" else device >= code
    if not same_major:
        return False
    if device in INTEGRATED and device != code:
        return code in UNIFIED_FROM_CUDA_13_2 and cuda is not None and cuda >= (13, 2)
    return True


def arch_coverage(arch_list: list[str], device_cc: int, cuda: tuple[int, int] | None) -> tuple[str, list[str]]:
    """How a wheel with ``arch_list`` runs on the GPU: ``native`` (cubins), ``ptx`` (JIT-compiled PTX only),
    ``none``, or ``unknown`` (no entry in the CUDA form: a ROCm build or an empty list); with the entries used."""
    arches = [arch for arch in map(parse_arch, arch_list) if arch is not None]
    if not arches:
        return "unknown", []
    cubins = [a.name for a in arches if not a.ptx and runs_on(a, device_cc, cuda)]
    if cubins:
        return "native", cubins
    ptx = [a.name for a in arches if a.ptx and runs_on(a, device_cc, cuda)]
    return ("ptx", ptx) if ptx else ("none", [])


def _version(text: str | None) -> tuple[int, int] | None:
    """``"12.6"`` → (12, 6); None when absent or malformed."""
    match = re.match(r"^(\d+)\.(\d+)", text or "")
    return (int(match[1]), int(match[2])) if match else None


def _driver_runs(cuda: str, driver: tuple[int, int] | None) -> bool:
    """Whether a driver for CUDA ``driver`` runs a torch build for CUDA ``cuda``. CUDA's minor version
    compatibility, which the pytorch.org wheels rely on, lets a driver for X.Y run every X.* build (and older
    majors); an unknown driver is assumed to. (PTX compiled at load time is the exception: arch_findings says so.)"""
    build = _version(cuda)
    return driver is None or (build is not None and build[0] <= driver[0])


def _cc_text(cc: int) -> str:
    return f"{cc // 10}.{cc % 10}"


# ------------------------------------------------------------------------------------------------ which torch to install
#: A version pip can install from download.pytorch.org: a release or nightly, with the index's own local label.
#: Anything else (``2.3.0a0+6ddf5cf.nv24.04`` in an NGC container, a source build) is on no index.
INDEXED_VERSION = re.compile(r"^(\d+\.\d+\.\d+(?:\.dev\d+)?)(?:\+(?:cu\d+|cpu|rocm[\d.]+))?$")


def _pip_install(probe: dict[str, Any], cuda: str) -> str:
    """``pip install torch==V torchvision==W --index-url .../cuXYZ`` for the CUDA ``cuda`` build of the installed
    torch release (and of the installed torchvision, which must match it); only for an INDEXED_VERSION."""
    version = INDEXED_VERSION.match(probe["version"])[1]
    nightly = ".dev" in version
    packages = f"torch=={version}"
    if probe.get("torchvision_version"):
        packages += f" torchvision=={probe['torchvision_version'].split('+')[0]}"
    root = "https://download.pytorch.org/whl/nightly" if nightly else "https://download.pytorch.org/whl"
    return f"pip install {'--pre ' if nightly else ''}{packages} --index-url {root}/cu{cuda.replace('.', '')}"


def _release_builds(probe: dict[str, Any]) -> dict[str, list[int]] | None:
    """The CUDA builds of the installed torch release and the arches each has, as torch itself lists them
    (``torch.cuda.PYTORCH_RELEASES_CODE_CC`` for this host); None for a torch that does not say."""
    builds = probe.get("release_builds")
    return dict(sorted(builds.items(), key=lambda item: _version(item[0]) or (0, 0))) if builds else None


def wheel_advice(probe: dict[str, Any], device_cc: int) -> str:
    """What to install for a GPU this torch has no kernels for: the same torch release built for a CUDA whose
    wheels have them (preferring one the driver supports), else a pointer to the releases — never an index
    that lacks the installed version."""
    version = probe.get("version") or ""
    generic = f"install a torch build whose arch list covers sm_{device_cc} (https://pytorch.org/get-started/locally/; check with torch.cuda.get_arch_list())"
    if not INDEXED_VERSION.match(version):
        return f"this torch ({version}) is on no pytorch.org index (a source or vendor build): rebuild it with TORCH_CUDA_ARCH_LIST including {_cc_text(device_cc)}, or {generic}"
    builds = _release_builds(probe)
    if builds is None:
        return generic
    covering = [cuda for cuda, ccs in builds.items() if any(runs_on(Arch(False, cc, ""), device_cc, _version(cuda)) for cc in ccs)]
    if not covering:
        return (f"no CUDA build of torch {version.split('+')[0]} has kernels for compute {_cc_text(device_cc)}: install a torch release that does "
                "(https://pytorch.org/get-started/locally/, older releases at https://pytorch.org/get-started/previous-versions/)")
    driver = _version(probe.get("driver_cuda"))
    cuda = _pick_build(covering, driver) or covering[0]
    command = _pip_install(probe, cuda)
    if not _driver_runs(cuda, driver):
        command += f" (after updating the NVIDIA driver to one for CUDA {cuda} or newer; this one supports CUDA {probe['driver_cuda']})"
    return command


def _pick_build(builds: list[str], driver: tuple[int, int] | None) -> str | None:
    """Of ``builds`` (oldest CUDA first), the one to advise for a driver for CUDA ``driver``: the newest the driver
    was made for, else the oldest it runs by minor version compatibility (the smallest step past it); with the
    driver unknown, the oldest. None when the driver runs none of them."""
    if driver is None:
        return builds[0] if builds else None
    made_for = [cuda for cuda in builds if (_version(cuda) or (99, 0)) <= driver]
    if made_for:
        return made_for[-1]
    return next((cuda for cuda in builds if _driver_runs(cuda, driver)), None)


def driver_advice(probe: dict[str, Any]) -> str:
    """The driver is older than the wheel's CUDA: update it, or install a build of this torch release for a CUDA the
    driver supports — named only when torch lists such a build and the driver's CUDA version is known."""
    need, have = probe.get("cuda_version"), probe.get("driver_cuda")
    update = f"update the NVIDIA driver to one for CUDA {need} or newer" + (f" (this one supports CUDA {have})" if have else "")
    driver = _version(have)
    cuda = _pick_build(list(_release_builds(probe) or {}), driver) if driver is not None else None
    if cuda and INDEXED_VERSION.match(probe.get("version") or ""):
        return f"{update}, or install the CUDA {cuda} build of this torch: {_pip_install(probe, cuda)}"
    return f"{update}, or install a torch build for the CUDA version the driver supports ('nvidia-smi' shows it): https://pytorch.org/get-started/locally/"


# ------------------------------------------------------------------------------------------------ error messages → fixes
SMOKE, STEP, QUERY = "smoke", "step", "query"  # where an error happened: smoke test, a training step, a CUDA query


def error_fix(message: str, where: str, probe: dict[str, Any] | None = None) -> str:
    """The fix for a CUDA / cuDNN error message; ``where`` it happened decides what it means (cuDNN failing to find
    an engine for the smoke test's tiny convolution is a broken cuDNN, for a training step usually workspace).
    ``probe`` (the torch probe's result, when known) makes arch and driver advice concrete."""
    text = message.lower()
    probe = probe or {}
    devices = [d for d in probe.get("devices", []) if "capability" in d]
    if "no kernel image is available" in text:
        if devices:
            major, minor = devices[0]["capability"]
            return "this torch has no kernels for the GPU's architecture: " + wheel_advice(probe, major * 10 + minor)
        return "this torch has no kernels for the GPU's architecture: install a build whose arch list covers it (see the 'gpu N arch' finding)"
    if "ptx was compiled with an unsupported toolchain" in text or "unsupported ptx version" in text:
        cuda = probe.get("cuda_version") or "of this torch"
        return (f"the GPU has no native kernels in this torch and runs its PTX, which this driver is too old to compile: update the NVIDIA driver "
                f"to one for CUDA {cuda} or newer, or install a torch build with native kernels for the GPU")
    if "driver version is insufficient" in text:
        return driver_advice(probe) if probe else "update the NVIDIA driver: it is older than this torch's CUDA"
    if "cudnn_status_not_initialized" in text:
        return ("cuDNN failed to start: usually another cuDNN (on LD_LIBRARY_PATH, or a conda cudnn package) shadows the one torch ships, "
                "or the GPU had no free memory for cuDNN ('nvidia-smi'); remove the other cuDNN from the library path, reinstall torch if it persists")
    if "cudnn_status_arch_mismatch" in text:
        return ("the cuDNN in use has no kernels for this GPU: it is not the one torch ships (check LD_LIBRARY_PATH and conda cudnn packages), "
                "or the GPU is older than it supports; use torch's own cuDNN, or a torch build for this GPU")
    if "busy or unavailable" in text:
        return ("the GPU is in exclusive-process mode and another process holds it: stop that process ('nvidia-smi' lists it) or choose "
                "another GPU with CUDA_VISIBLE_DEVICES; an administrator can run 'nvidia-smi -c DEFAULT'")
    if "illegal memory access" in text:
        return "usually follows workspace exhaustion: smaller batch + accumulation; CUDA_LAUNCH_BLOCKING=1 shows the failing kernel"
    if "out of memory" in text:
        if where == STEP:
            return "lower train.batch_size (raise train.accumulate to keep the effective batch), or use bf16"
        return "the GPU is full before training starts: other processes hold its memory ('nvidia-smi' lists them); stop them or choose another GPU with CUDA_VISIBLE_DEVICES"
    if "unable to find an engine" in text or "cudnn_status" in text or "workspace" in text:
        if where == STEP:
            return ("cuDNN ran out of workspace for this convolution: halve train.batch_size and double train.accumulate, use bf16/fp16, "
                    "and set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")
        return ("cuDNN cannot run even a small convolution, so it does not fit this GPU and driver: check LD_LIBRARY_PATH for another libcudnn, "
                "update the NVIDIA driver, and reinstall torch if it persists")
    return "run with CUDA_LAUNCH_BLOCKING=1 to see the failing kernel; check the driver with 'nvidia-smi'"


SIGNALS = {"SIGILL": "illegal instruction", "SIGSEGV": "segmentation fault", "SIGBUS": "bus error", "SIGABRT": "aborted",
           "SIGKILL": "killed", "SIGFPE": "arithmetic fault"}


def crash_finding(check: str, probe_name: str, crash: dict[str, Any]) -> Finding:
    """A probe process killed by a signal: what the signal means where it happened (importing torch is not CUDA)."""
    signal, stage = crash["crash"], crash.get("stage", "starting")
    detail = f"the {probe_name} probe crashed with {signal} ({SIGNALS.get(signal, 'signal')}) while {stage}"
    if signal == "SIGILL":
        fix = ("a CPU instruction this processor lacks: this torch (or a library it loads) was built for a newer CPU — copied from another "
               "machine, built with -march=native, or run under an emulator or VM that hides AVX/AVX2; install the official wheel for this "
               "platform (pip install --force-reinstall torch), and check the CPU's flags in /proc/cpuinfo")
    elif signal == "SIGKILL":
        fix = "the process was killed, usually by the kernel's out-of-memory killer: check 'dmesg' and the free RAM"
    elif stage == IMPORTING_TORCH:
        fix = ("a native library crashed while torch loaded: usually another CUDA, cuDNN or NCCL on LD_LIBRARY_PATH shadows torch's own; "
               "unset LD_LIBRARY_PATH and retry, reinstall torch in a fresh virtual environment if it persists")
    elif "GPU" in stage or "CUDA" in stage:  # the probes name the GPU in every stage that uses it
        fix = ("the NVIDIA driver crashed the process: check 'nvidia-smi' (after a driver update, a reboot loads the matching kernel module) "
               "and update the driver; set CUDA_VISIBLE_DEVICES='' to train on the CPU meanwhile")
    else:
        fix = (f"a native library crashed (torch, a data library, a plugin's extension): rerun 'python -m dbtk.doctor.probe {probe_name} ...' "
               "with PYTHONFAULTHANDLER=1 to see where")
    return Finding(check, FAIL, detail, fix)


# ------------------------------------------------------------------------------------------------ torch probe
def torch_findings(torch_probe: dict[str, Any], require_cuda: bool = False) -> list[Finding]:
    """Build, driver and per-GPU findings from the torch probe."""
    if torch_probe.get("status") == "timeout":
        return [Finding("torch", FAIL, f"the torch probe hung for {torch_probe.get('timeout')} s while {torch_probe.get('stage', 'importing torch')}",
                        "a hung driver: check 'nvidia-smi'; set CUDA_VISIBLE_DEVICES='' to train on the CPU meanwhile")]
    if "crash" in torch_probe:
        return [crash_finding("torch", "torch", torch_probe)]
    if "import_error" in torch_probe:
        return [Finding("torch", FAIL, f"torch does not import: {torch_probe['import_error']}",
                        "pip install torch==2.14.1 torchvision==0.29.1 (or the CUDA build for your driver from pytorch.org)")]
    if "error" in torch_probe:
        return [Finding("torch", FAIL, f"the torch probe failed: {torch_probe['error']}",
                        "run 'python -m dbtk.doctor.probe torch' to see the whole error")]
    findings = [Finding("torch", OK, f"torch {torch_probe['version']} ({_build(torch_probe)})")]
    if not torch_probe.get("cuda_available"):
        reason, fix = _why_no_cuda(torch_probe)
        findings.append(Finding("cuda", FAIL if require_cuda else WARN, f"CUDA not available: {reason}", fix))
        return findings
    if torch_probe.get("cuda_error"):
        error = torch_probe["cuda_error"]
        findings.append(Finding("cuda", FAIL, f"CUDA failed while {error['stage']}: {error['message']}", error_fix(error["message"], QUERY, torch_probe)))
        return findings
    devices = torch_probe.get("devices", [])
    findings.append(Finding("cuda", OK, f"CUDA {torch_probe.get('cuda_version')}, cuDNN {torch_probe.get('cudnn_version')}, {_driver(torch_probe)}{len(devices)} GPU(s)"))
    for index, device in enumerate(devices):
        findings += _device_findings(index, device, torch_probe)
    if torch_probe.get("smoke_error"):
        findings.append(Finding("gpu smoke test", FAIL, torch_probe["smoke_error"], error_fix(torch_probe["smoke_error"], SMOKE, torch_probe)))
    elif "smoke_max_diff" in torch_probe:
        diff = torch_probe["smoke_max_diff"]
        status = OK if diff < 1e-2 else FAIL
        findings.append(Finding("gpu smoke test", status, f"matmul + conv forward/backward on GPU match the CPU (max diff {diff:.1e})",
                                "" if status == OK else "results differ from the CPU: update the driver, or try CUDA_LAUNCH_BLOCKING=1 to locate the kernel"))
    if not torch_probe.get("nccl_available", True):
        findings.append(Finding("nccl", WARN if len(devices) > 1 else OK,
                                "NCCL not available: multi-GPU training (dbtk train --nproc N on CUDA) cannot start; single-GPU training is unaffected",
                                "for several GPUs use a Linux CUDA build of torch (its wheels include NCCL)" if len(devices) > 1 else ""))
    return findings


def _build(probe: dict[str, Any]) -> str:
    if probe.get("hip_version"):
        return f"ROCm {probe['hip_version']}"
    if probe.get("cuda_version"):
        return f"CUDA {probe['cuda_version']} build"
    return "CPU-only build"


def _driver(probe: dict[str, Any]) -> str:
    """``driver 550.54.14 (CUDA 12.4), `` when the probe read it; empty otherwise."""
    version, cuda = probe.get("driver_version"), probe.get("driver_cuda")
    if not version and not cuda:
        return ""
    return f"driver {version or 'version unknown'}" + (f" (CUDA {cuda})" if cuda else "") + ", "


def _why_no_cuda(probe: dict[str, Any]) -> tuple[str, str]:
    visible = probe.get("env", {}).get("CUDA_VISIBLE_DEVICES")
    init_error = probe.get("cuda_init_error", "") or ""
    if not probe.get("cuda_version") and not probe.get("hip_version"):
        if probe.get("nvidia_smi"):
            return "this torch wheel is CPU-only but an NVIDIA GPU is present", "pip install torch --index-url https://download.pytorch.org/whl/cu126 (a CUDA 12.x wheel)"
        return "no GPU and a CPU-only torch: training runs on the CPU", "nothing to do for CPU training; on a GPU machine install a CUDA wheel"
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU", "unset CUDA_VISIBLE_DEVICES (or list the GPU ids to use)"
    if "too old" in init_error.lower() or "insufficient" in init_error.lower():
        return f"the NVIDIA driver is too old for CUDA {probe['cuda_version']} ({init_error})", driver_advice(probe)
    if "no nvidia driver" in init_error.lower() or not probe.get("nvidia_smi"):
        return "no NVIDIA driver found", "install the NVIDIA driver (check with 'nvidia-smi'), or train on the CPU"
    return init_error or "torch.cuda.is_available() is False", "run 'nvidia-smi'; check the driver and that the container sees the GPU (--gpus all)"


def _device_findings(index: int, device: dict[str, Any], probe: dict[str, Any]) -> list[Finding]:
    """One GPU: what it is, whether this torch has kernels for it, its free memory, bf16 and MIG.

    A GPU that cannot be queried or holds no free memory fails when it is ``cuda:0`` (training's default device)
    and warns otherwise (CUDA_VISIBLE_DEVICES can leave it out).
    """
    name = f"gpu {index}"
    unusable = FAIL if index == 0 else WARN
    if "error" in device:
        return [Finding(name, unusable, f"GPU {index} cannot be queried: {device['error']}", error_fix(device["error"], QUERY, probe))]
    major, minor = device["capability"]
    cc, total = major * 10 + minor, device["total_gb"]
    free = f"{device['free_gb']:.1f} GB free" if "free_gb" in device else "free memory unknown"
    findings = [Finding(name, OK, f"{device['name']}, compute {major}.{minor}, {total:.1f} GB ({free})")]
    findings += _arch_findings(name, device, cc, probe)
    if "memory_error" in device:
        findings.append(Finding(f"{name} memory", unusable, f"reading free memory failed: {device['memory_error']}", error_fix(device["memory_error"], QUERY, probe)))
    elif device["free_gb"] < LOW_FREE_SHARE * total:
        processes = device.get("processes") or []
        holders = ", ".join(f"{p['name']} (pid {p['pid']}, {p['used_gb']:.1f} GB)" for p in processes) or "'nvidia-smi' lists them"
        findings.append(Finding(f"{name} memory", WARN, f"only {device['free_gb']:.1f} of {total:.1f} GB free: other processes hold the rest ({holders})",
                                "stop them or train on another GPU (CUDA_VISIBLE_DEVICES); batch sizes measured now are smaller than the GPU allows"))
    if device.get("bf16"):
        findings.append(Finding(f"{name} precision", OK, "bf16 supported: use precision = 'bf16'"))
    else:
        findings.append(Finding(f"{name} precision", WARN, f"{device['name']} has no native bf16 (compute {major}.{minor} < 8.0): bf16 would be emulated, without cuDNN kernels",
                                "use precision = 'fp32', or 'fp16' (GradScaler on; watch the hmean: fp16 cost the reference 10 points)"))
    if device.get("mig"):
        findings.append(Finding(f"{name} mig", WARN, "MIG mode is on: only the MIG slice's memory is usable", "size the batch for the slice"))
    return findings


def _arch_findings(name: str, device: dict[str, Any], cc: int, probe: dict[str, Any]) -> list[Finding]:
    """Whether the wheel has kernels for the GPU, by the rule torch applies (cubins run on later minors of their
    major; PTX on later GPUs, compiled by the driver): nothing when it has, a warning for PTX only, else the fix."""
    arch_list = probe.get("arch_list", [])
    coverage, entries = arch_coverage(arch_list, cc, _version(probe.get("cuda_version")))
    if coverage == "ptx":
        return [Finding(f"{name} arch", WARN,
                        f"{device['name']} (sm_{cc}) has no native kernels in this torch; it runs by compiling the wheel's {', '.join(entries)} PTX "
                        f"(slow first start; the driver must support CUDA {probe.get('cuda_version')} or newer)", wheel_advice(probe, cc))]
    if coverage == "none":
        return [Finding(f"{name} arch", FAIL, f"{device['name']} needs sm_{cc} (compute {_cc_text(cc)}); this wheel has {', '.join(arch_list)}, none of which runs on it",
                        wheel_advice(probe, cc))]
    return []


# ------------------------------------------------------------------------------------------------ libraries, system, plugins
def library_findings(versions: dict[str, Any]) -> list[Finding]:
    if "crash" in versions:
        return [crash_finding("libraries", "versions", versions)]
    if "error" in versions or versions.get("status") == "timeout":
        detail = versions.get("error") or f"hung for {versions['timeout']:g} s while {versions.get('stage', 'importing')}"
        return [Finding("libraries", FAIL, f"the versions probe failed: {detail}", "run 'python -m dbtk.doctor.probe versions' to see the whole error")]
    findings = []
    for package in ("torchvision", "timm"):
        info = versions.get(package, {})
        if "error" in info:
            fix = "pip install torch==2.14.1 torchvision==0.29.1 (torchvision must match torch)" if package == "torchvision" else "pip install 'timm>=1.0'"
            findings.append(Finding(package, FAIL, f"{package} does not import: {info['error']}", fix))
        elif info:
            findings.append(Finding(package, OK, f"{package} {info['version']}"))
    return findings


def system_findings(system: dict[str, Any], workers: int | None = None) -> list[Finding]:
    findings = []
    cpus = system.get("cpu_count") or 1
    if workers is not None and workers > cpus:
        findings.append(Finding("data loader", WARN, f"train.workers = {workers} but only {cpus} CPUs", f"set workers = {max(cpus - 1, 1)}"))
    else:
        findings.append(Finding("data loader", OK, f"{cpus} CPUs" + (f", workers = {workers}" if workers is not None else "")))
    shm = system.get("shm_gb")
    if shm is not None and shm < 1.0:
        findings.append(Finding("/dev/shm", WARN, f"/dev/shm is {shm:.2f} GB: worker processes may crash with bus errors",
                                "docker run --shm-size=8g (or --ipc=host), or set workers = 0"))
    free = system.get("disk_free_gb")
    if free is not None:
        status = OK if free >= 5 else WARN
        findings.append(Finding("disk", status, f"{free:.1f} GB free for the run folder",
                                "" if status == OK else "checkpoints need ~150 MB each: free space or choose --out on another disk"))
    for name, value in sorted(system.get("env", {}).items()):
        if name == "CUDA_LAUNCH_BLOCKING" and value == "1":
            findings.append(Finding(name, WARN, "CUDA_LAUNCH_BLOCKING=1 serialises every kernel (slow)", "unset it outside debugging"))
        elif name == "OMP_NUM_THREADS" and value.isdigit() and int(value) < cpus and not workers:
            findings.append(Finding(name, WARN, f"OMP_NUM_THREADS={value} uses {value} of {cpus} CPUs", f"unset it or set it to {cpus}"))
        else:
            findings.append(Finding(name, OK, f"{name}={value}"))
    return findings


def plugin_findings(plugins: list[dict[str, Any]]) -> list[Finding]:
    broken = [p for p in plugins if p["status"] != "ok"]
    if not broken:
        return [Finding("plugins", OK, f"{len(plugins)} components import")]
    return [Finding(f"plugin {p['group']} '{p['name']}'", FAIL if p["distribution"] == "dbtk" else WARN,
                    f"{p['distribution']}: {p['detail']}", f"reinstall or remove '{p['distribution']}'") for p in broken]


# ------------------------------------------------------------------------------------------------ --recipe
def _probe_failure(check: str, probe_name: str, result: dict[str, Any]) -> Finding | None:
    """A recipe probe that crashed or failed as a whole (not a finding about the recipe)."""
    if "crash" in result:
        return crash_finding(check, probe_name, result)
    if "error" in result:
        return Finding(check, FAIL, result["error"], error_fix(result["error"], STEP))
    return None


def recipe_findings(measure: dict[str, Any]) -> list[Finding]:
    """Advice from measuring the recipe's model at its batch and image size (see probes.measure_recipe), then
    whether its pretrained weights are available offline (the probe looks before it measures)."""
    return _measure_findings(measure) + weights_findings(measure.get("weights", {"source": "none"}))


def _measure_findings(measure: dict[str, Any]) -> list[Finding]:
    failure = _probe_failure("recipe", "measure", measure)
    if failure:
        return [failure]
    findings = []
    batch, accumulate = measure["batch_size"], measure["accumulate"]
    if measure["device"] != "cuda":  # memory is measured on CUDA only; elsewhere the step's time is the finding
        findings.append(Finding("recipe", OK, f"training step at batch {batch}: {measure['seconds_per_step']:.2f} s/step on the {measure['device'].upper()} "
                                f"({batch / measure['seconds_per_step']:.1f} images/s)"))
        return findings
    fits = {int(size): ok for size, ok in measure.get("fits", {}).items()}
    if "step_error" in measure:  # not a matter of memory: a smaller batch would fail the same way
        error = measure["step_error"]
        findings.append(Finding("recipe", FAIL, f"the training step fails at batch {error['batch']}: {error['message']}", error_fix(error["message"], STEP)))
    elif fits.get(batch) is False:
        largest = max((size for size, ok in fits.items() if ok), default=0)
        free, total = measure.get("free_gb"), measure["total_gb"]
        held = f"; only {free:.1f} of {total:.1f} GB were free" if free is not None and free < 0.9 * total else ""
        if largest:
            new_accumulate = max(1, batch * accumulate // largest)
            findings.append(Finding("recipe memory", FAIL, f"batch {batch} does not fit ({measure.get('oom_message', 'out of memory')}){held}",
                                    f"set train.batch_size = {largest} and train.accumulate = {new_accumulate} (same effective batch)"))
        else:
            findings.append(Finding("recipe memory", FAIL, f"not even batch 1 fits{held}", "lower data.image_size / data.crop or use a smaller encoder"))
    else:
        findings.append(Finding("recipe memory", OK, f"batch {batch} fits: peak {measure['peak_gb']:.1f} of {measure['total_gb']:.1f} GB"))
    if measure.get("precision") == "bf16" and not measure.get("bf16_supported", True):
        findings.append(Finding("recipe precision", WARN, "the recipe asks for bf16, which this GPU only emulates (compute < 8.0): convolutions run without cuDNN, several times slower",
                                "set train.precision = 'fp32' (or 'fp16')"))
    return findings


def weights_findings(weights: dict[str, Any]) -> list[Finding]:
    """Whether the encoder's pretrained weights are available offline (see probe.pretrained_weights): a compute
    node without a network must find them in the hub cache, or training fails at its first line."""
    check, source = "recipe weights", weights["source"]
    if source == "none":
        return []
    if source == "error":
        return [Finding(check, FAIL, weights["message"], weights["hint"])]
    if source == "file":
        if weights["available"]:
            return [Finding(check, OK, f"local file {weights['path']}")]
        return [Finding(check, FAIL, f"weights file not found: {weights['path']}", "point model.encoder.pretrained at an existing file")]
    tag, cache = weights["tag"], weights["cache"]
    if weights["available"]:
        return [Finding(check, OK, f"{tag} is cached in {cache}: available offline")]
    if weights["pickled"]:
        return [Finding(check, FAIL, f"{tag} is cached as a pickle only ({weights['pickled']}), which dbtk never loads",
                        f"dbtk weights import {weights['pickled']} --tag {tag}")]
    if weights["offline"]:
        return [Finding(check, FAIL, f"{tag} is not in {cache} and HF_HUB_OFFLINE is set: training fails before its first step",
                        f"dbtk weights fetch {tag} where the hub can be reached (same HF_HOME), then copy the cache")]
    return [Finding(check, WARN, f"{tag} is not in {cache}: not available offline; training downloads it first",
                    f"dbtk weights fetch {tag} (on a login node when compute nodes have no network)")]


#: Training faster than this times the loader alone: prefetched batches fed the timed steps, the run was too short.
OUTRAN = 1.2
#: Training at this share of the loader's own rate or more is held back by it (on a CPU the step does not wait:
#: the workers take its cores).
AT_LOADER_SPEED = 0.85


def run_findings(run: dict[str, Any], cpus: int | None = None) -> list[Finding]:
    """Advice from training the recipe for a few steps on its real data (see probes.run_recipe)."""
    failure = _probe_failure("recipe run", "run", run)
    if failure:
        return [failure]
    findings = [_loss_finding(run)]
    workers, rate, loader_rate = run.get("workers", 0), run.get("train_images_per_second"), run.get("loader_images_per_second")
    wait = run.get("data_wait_fraction")
    if rate is not None:
        if not loader_rate:
            detail = f"training {rate:.1f} images/s"
        elif workers:
            detail = (f"training {rate:.1f} images/s; data loader alone {loader_rate:.1f} images/s with {workers} "
                      f"worker{'s' if workers > 1 else ''} ({loader_rate / workers:.1f} per worker)")
        else:
            detail = f"training {rate:.1f} images/s; data loader alone {loader_rate:.1f} images/s in the main process (workers = 0)"
        waited = f"; the step waits for data {wait:.0%} of the time" if wait is not None else ""
        more = f"raise train.workers (this machine has {cpus} CPUs)" if cpus and workers < cpus - 1 else "enable data.cache = 'auto' or use smaller source images"
        if loader_rate and rate > OUTRAN * loader_rate:  # batches prefetched before the timed run fed most of it
            findings.append(Finding("recipe data loading", WARN, f"{detail}: the run was too short to measure the loader "
                                    f"(batches prefetched before it fed the step: {run.get('prefetched', '?')})", "run more --steps"))
        elif wait is not None and wait > 0.2:
            findings.append(Finding("recipe data loading", WARN, detail + waited, more))
        elif loader_rate and rate >= AT_LOADER_SPEED * loader_rate:
            # On a CPU the loader's workers take the cores the step needs: a starved step is slow, not waiting.
            findings.append(Finding("recipe data loading", WARN, f"{detail}{waited}: training runs at the data loader's speed", more))
        else:
            findings.append(Finding("recipe data loading", OK, detail + waited))
    skipped = run.get("skipped") or {}
    if skipped:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(skipped.items()))
        count = sum(skipped.values())
        findings.append(Finding("recipe samples", WARN, f"{count} sample{'s' if count != 1 else ''} skipped ({reasons})",
                                f"see which files with: {run.get('clean_data', 'dbtk clean-data DATA --check')}"))
    if "peak_gb" in run:
        findings.append(Finding("recipe memory", OK, f"peak {run['peak_gb']:.1f} of {run['total_gb']:.1f} GB during training"))
    elif "peak_rss_gb" in run:
        findings.append(Finding("recipe memory", OK, f"peak process memory {run['peak_rss_gb']:.1f} GB"))
    findings += _benchmark_findings(run.get("cudnn_benchmark"), bool(run.get("benchmark_setting")))
    findings += _tf32_findings(run.get("tf32"), run.get("precision"))
    return findings


def _loss_finding(run: dict[str, Any]) -> Finding:
    """A non-finite loss fails; fp16 scaler overflow steps (finite loss, gradients overflowed at the current scale,
    step skipped and the scale lowered) are GradScaler working as designed, unless they never stop."""
    steps, logged, finite = run["steps"], run.get("losses_logged", 0), run.get("losses_finite", 0)
    bad = max(run.get("bad_steps", 0), logged - finite)
    overflow = run.get("overflow_steps", 0)
    if bad:
        return Finding("recipe loss", FAIL, f"{bad} of {steps} steps had a non-finite loss (skipped)",
                       f"lower train.lr, use precision = 'bf16' or 'fp32', and check the data with '{run.get('clean_data', 'dbtk clean-data DATA --check')}'")
    if overflow > max(steps // 2, NORMAL_OVERFLOW_STEPS):
        return Finding("recipe loss", WARN, f"finite on all {logged} of {steps} steps, but fp16 gradients overflowed on {overflow} steps (skipped, no update)",
                       "use precision = 'bf16' (compute 8.0 or newer) or 'fp32': fp16 cannot hold these gradients at any scale GradScaler tried")
    note = f"; {overflow} fp16 scaler overflow step{'s' if overflow > 1 else ''} skipped (GradScaler finding its scale, normal)" if overflow else ""
    return Finding("recipe loss", OK, f"finite on all {logged} of {steps} steps{note}")


def _benchmark_findings(benchmark: dict[str, Any] | None, setting: bool) -> list[Finding]:
    """cuDNN autotuning (torch.backends.cudnn.benchmark) picks faster kernels but may need more workspace; the step
    is timed with it off and on. ``setting`` is the recipe's ``train.cudnn_benchmark``."""
    if not benchmark:
        return []
    off, on = benchmark.get("off", {}), benchmark.get("on", {})
    if "error" in off:
        return [Finding("cudnn benchmark", FAIL, f"the model fails with cudnn.benchmark off: {off['error']}", error_fix(off["error"], STEP))]
    if "error" in on:
        return [Finding("cudnn benchmark", FAIL if setting else WARN, f"the model fails with cudnn.benchmark on: {on['error']}",
                        f"set train.cudnn_benchmark = false; {error_fix(on['error'], STEP)}")]
    detail = f"step {off['ms']:.0f} ms with cudnn.benchmark off, {on['ms']:.0f} ms on"
    if on["ms"] < 0.9 * off["ms"]:
        if not setting:
            return [Finding("cudnn benchmark", OK, detail, "set train.cudnn_benchmark = true (fixed input sizes: autotuning pays off)")]
    elif setting:
        return [Finding("cudnn benchmark", OK, detail, "set train.cudnn_benchmark = false: autotuning gains nothing here")]
    return [Finding("cudnn benchmark", OK, detail)]


def _tf32_findings(tf32: dict[str, Any] | None, precision: str | None) -> list[Finding]:
    """TF32 only matters for fp32 runs on compute 8.0+, and for DBNet only in convolutions (cuDNN's flag, on by
    default); matmul TF32 touches almost nothing in a convolutional model, so it is not advised."""
    if not tf32 or not tf32.get("capable") or precision != "fp32":
        return []
    if tf32.get("cudnn") and tf32.get("override") != "0":
        return [Finding("tf32", OK, "fp32 convolutions run in TF32 (torch.backends.cudnn.allow_tf32 is on, torch's default)")]
    cause = "NVIDIA_TF32_OVERRIDE=0" if tf32.get("override") == "0" else "torch.backends.cudnn.allow_tf32 = False"
    return [Finding("tf32", WARN, f"fp32 convolutions run without TF32 ({cause}): slower on this GPU",
                    f"remove what sets {cause} (TF32 convolutions are torch's default), or train with precision = 'bf16'")]


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.status == FAIL for f in findings) else 0
