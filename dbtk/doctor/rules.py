"""Doctor rules: probe results (plain dicts) in, findings with a concrete fix out. No torch import here.

Kept apart from the probes so every rule is unit-tested with recorded results (a healthy RTX 3060, an old
driver, an arch missing from the wheel, OOM at batch 4, a Turing card without bf16) on any machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def torch_findings(torch_probe: dict[str, Any], require_cuda: bool = False) -> list[Finding]:
    """Build, driver and per-GPU findings from the torch probe."""
    if torch_probe.get("status") == "timeout":
        return [Finding("torch", FAIL, f"importing torch / initialising CUDA hung for {torch_probe.get('timeout')} s",
                        "a hung driver: check 'nvidia-smi'; set CUDA_VISIBLE_DEVICES='' to train on the CPU meanwhile")]
    if "error" in torch_probe:
        return [Finding("torch", FAIL, f"torch does not import: {torch_probe['error']}",
                        "pip install torch==2.14.1 torchvision==0.29.1 (or the CUDA build for your driver from pytorch.org)")]
    findings = [Finding("torch", OK, f"torch {torch_probe['version']} ({_build(torch_probe)})")]
    cuda_build = torch_probe.get("cuda_version")
    if not torch_probe.get("cuda_available"):
        reason, fix = _why_no_cuda(torch_probe)
        findings.append(Finding("cuda", FAIL if require_cuda else WARN, f"CUDA not available: {reason}", fix))
        return findings
    findings.append(Finding("cuda", OK, f"CUDA {cuda_build}, cuDNN {torch_probe.get('cudnn_version')}, {len(torch_probe.get('devices', []))} GPU(s)"))
    arch_list = torch_probe.get("arch_list", [])
    for index, device in enumerate(torch_probe.get("devices", [])):
        findings += _device_findings(index, device, arch_list)
    if torch_probe.get("smoke_error"):
        findings.append(Finding("gpu smoke test", FAIL, torch_probe["smoke_error"], _cudnn_fix(torch_probe["smoke_error"])))
    elif "smoke_max_diff" in torch_probe:
        diff = torch_probe["smoke_max_diff"]
        status = OK if diff < 1e-2 else FAIL
        findings.append(Finding("gpu smoke test", status, f"matmul + conv forward/backward on GPU match the CPU (max diff {diff:.1e})",
                                "" if status == OK else "results differ from the CPU: update the driver, or try CUDA_LAUNCH_BLOCKING=1 to locate the kernel"))
    if not torch_probe.get("nccl_available", True):
        findings.append(Finding("nccl", WARN, "NCCL not available: multi-GPU training falls back to gloo", "install a CUDA build of torch with NCCL"))
    return findings


def _build(probe: dict[str, Any]) -> str:
    if probe.get("hip_version"):
        return f"ROCm {probe['hip_version']}"
    if probe.get("cuda_version"):
        return f"CUDA {probe['cuda_version']} build"
    return "CPU-only build"


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
        return f"the NVIDIA driver is too old for CUDA {probe['cuda_version']} ({init_error})", (
            "update the NVIDIA driver, or install a torch wheel built for an older CUDA: pip install torch --index-url https://download.pytorch.org/whl/cu118"
        )
    if "no nvidia driver" in init_error.lower() or not probe.get("nvidia_smi"):
        return "no NVIDIA driver found", "install the NVIDIA driver (check with 'nvidia-smi'), or train on the CPU"
    return init_error or "torch.cuda.is_available() is False", "run 'nvidia-smi'; check the driver and that the container sees the GPU (--gpus all)"


def _device_findings(index: int, device: dict[str, Any], arch_list: list[str]) -> list[Finding]:
    name = f"gpu {index}"
    major, minor = device["capability"]
    sm = f"sm_{major}{minor}"
    findings = [Finding(name, OK, f"{device['name']}, compute {major}.{minor}, {device['total_gb']:.1f} GB ({device.get('free_gb', device['total_gb']):.1f} GB free)")]
    compiled = {a.replace("compute_", "sm_") for a in arch_list}
    if arch_list and sm not in compiled and not any(a.startswith("compute_") and int(a[8:]) <= major * 10 + minor for a in arch_list):
        findings.append(Finding(f"{name} arch", FAIL, f"{device['name']} needs {sm}; this wheel has {', '.join(arch_list)}",
                                "install a torch wheel that supports your GPU (newer CUDA: pip install torch --index-url https://download.pytorch.org/whl/cu128)"))
    if device.get("bf16"):
        findings.append(Finding(f"{name} precision", OK, "bf16 supported: use precision = 'bf16'"))
    else:
        findings.append(Finding(f"{name} precision", WARN, f"{device['name']} has no fast bf16 (compute {major}.{minor} < 8.0)",
                                "use precision = 'fp32', or 'fp16' (GradScaler on; watch the hmean: fp16 cost the reference 10 points)"))
    if device.get("mig"):
        findings.append(Finding(f"{name} mig", WARN, "MIG mode is on: only the MIG slice's memory is usable", "size the batch for the slice"))
    return findings


def _cudnn_fix(message: str) -> str:
    text = message.lower()
    if "unable to find an engine" in text or "cudnn_status" in text or "workspace" in text:
        return "cuDNN ran out of workspace: halve train.batch_size and double train.accumulate, use bf16/fp16, and set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    if "illegal memory access" in text:
        return "usually follows workspace exhaustion: smaller batch + accumulation; CUDA_LAUNCH_BLOCKING=1 shows the failing kernel"
    if "out of memory" in text:
        return "lower train.batch_size (raise train.accumulate to keep the effective batch), or use bf16"
    return "run with CUDA_LAUNCH_BLOCKING=1 to see the failing kernel; check the driver with 'nvidia-smi'"


def library_findings(versions: dict[str, Any]) -> list[Finding]:
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


def recipe_findings(measure: dict[str, Any]) -> list[Finding]:
    """Advice from measuring the recipe's model at its batch and image size (see probes.measure_recipe)."""
    if "error" in measure:
        return [Finding("recipe", FAIL, measure["error"], _cudnn_fix(measure["error"]))]
    findings = []
    batch, accumulate = measure["batch_size"], measure["accumulate"]
    if measure["device"] != "cuda":  # memory is measured on CUDA only; elsewhere the step's time is the finding
        findings.append(Finding("recipe", OK, f"training step at batch {batch}: {measure['seconds_per_step']:.2f} s/step on the {measure['device'].upper()} "
                                f"({batch / measure['seconds_per_step']:.1f} images/s)"))
        return findings
    fits = measure.get("fits", {})
    if fits.get(str(batch)) is False or fits.get(batch) is False:
        largest = max((int(b) for b, ok in fits.items() if ok), default=0)
        if largest:
            new_accumulate = max(1, batch * accumulate // largest)
            findings.append(Finding("recipe memory", FAIL, f"batch {batch} does not fit ({measure.get('oom_message', 'out of memory')})",
                                    f"set train.batch_size = {largest} and train.accumulate = {new_accumulate} (same effective batch)"))
        else:
            findings.append(Finding("recipe memory", FAIL, "not even batch 1 fits", "lower data.image_size / data.crop or use a smaller encoder"))
    else:
        findings.append(Finding("recipe memory", OK, f"batch {batch} fits: peak {measure['peak_gb']:.1f} of {measure['total_gb']:.1f} GB"))
    if measure.get("precision") == "bf16" and not measure.get("bf16_supported", True):
        findings.append(Finding("recipe precision", FAIL, "the recipe asks for bf16, which this GPU lacks", "set train.precision = 'fp32' (or 'fp16')"))
    return findings


def run_findings(run: dict[str, Any], cpus: int | None = None) -> list[Finding]:
    """Advice from training the recipe for a few steps on its real data (see probes.run_recipe)."""
    if "error" in run:
        return [Finding("recipe run", FAIL, run["error"], _cudnn_fix(run["error"]))]
    findings = []
    steps, logged, finite = run["steps"], run.get("losses_logged", 0), run.get("losses_finite", 0)
    if finite < logged or run.get("bad_steps"):
        findings.append(Finding("recipe loss", FAIL, f"{logged - finite} of {logged} steps had a non-finite loss ({run.get('bad_steps', 0)} skipped)",
                                "lower train.lr, use precision = 'bf16' or 'fp32', and check the data with 'dbtk clean-data SRC --check'"))
    else:
        findings.append(Finding("recipe loss", OK, f"finite on all {logged} of {steps} steps"))
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
        if wait is not None and wait > 0.2:
            more = f"raise train.workers (this machine has {cpus} CPUs)" if cpus and workers < cpus - 1 else "enable data.cache = 'auto' or use smaller source images"
            findings.append(Finding("recipe data loading", WARN, f"{detail}; the step waits for data {wait:.0%} of the time", more))
        else:
            findings.append(Finding("recipe data loading", OK, detail + (f"; waits for data {wait:.0%} of the time" if wait is not None else "")))
    skipped = run.get("skipped") or {}
    if skipped:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(skipped.items()))
        findings.append(Finding("recipe samples", WARN, f"{sum(skipped.values())} samples skipped ({reasons})", "see which files with: dbtk clean-data SRC --check"))
    if "peak_gb" in run:
        findings.append(Finding("recipe memory", OK, f"peak {run['peak_gb']:.1f} of {run['total_gb']:.1f} GB during training"))
    elif "peak_rss_gb" in run:
        findings.append(Finding("recipe memory", OK, f"peak process memory {run['peak_rss_gb']:.1f} GB"))
    findings += _benchmark_findings(run.get("cudnn_benchmark"))
    tf32 = run.get("tf32")
    if tf32 and tf32.get("capable") and not tf32.get("matmul"):
        findings.append(Finding("tf32", OK, "TF32 matmul is off (cuDNN convolutions: " + ("on" if tf32.get("cudnn") else "off") + "); it only affects fp32 runs",
                                "for fp32 recipes on this GPU: torch.backends.cuda.matmul.allow_tf32 = True is ~2x faster at slightly lower precision"))
    return findings


def _benchmark_findings(benchmark: dict[str, Any] | None) -> list[Finding]:
    """cuDNN autotuning (benchmark = True) picks faster kernels but may need more workspace; check both."""
    if not benchmark:
        return []
    off, on = benchmark.get("off", {}), benchmark.get("on", {})
    if "error" in off or "error" in on:
        failing = "on" if "error" in on else "off"
        message = (on if failing == "on" else off)["error"]
        return [Finding("cudnn benchmark", FAIL if failing == "off" else WARN, f"the model fails with cudnn.benchmark {failing}: {message}", _cudnn_fix(message))]
    return [Finding("cudnn benchmark", OK, f"step {off['ms']:.0f} ms with cudnn.benchmark off, {on['ms']:.0f} ms on",
                    "" if on["ms"] >= 0.9 * off["ms"] else "fixed input sizes (data.crop / image_size) make benchmark = True worthwhile")]


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.status == FAIL for f in findings) else 0
