"""dbtk doctor: rules on recorded probe results, hung probes, and the real run on this machine."""

from __future__ import annotations

import json
import time

from dbtk.doctor import probes, rules
from tests.conftest import run_dbtk

RTX3060 = {"name": "NVIDIA GeForce RTX 3060", "capability": [8, 6], "total_gb": 11.8, "free_gb": 11.2, "bf16": True}
HEALTHY = {
    "version": "2.14.1+cu126", "cuda_version": "12.6", "cudnn_version": 91000, "cuda_available": True,
    "arch_list": ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"], "devices": [RTX3060],
    "smoke_max_diff": 2e-6, "nccl_available": True, "nvidia_smi": True, "env": {},
}


def statuses(findings: list[rules.Finding]) -> dict[str, str]:
    return {f.check: f.status for f in findings}


def test_healthy_rtx3060() -> None:
    findings = rules.torch_findings(HEALTHY, require_cuda=True)
    assert rules.exit_code(findings) == 0
    assert statuses(findings)["gpu 0 precision"] == "ok"
    assert "RTX 3060, compute 8.6, 11.8 GB" in findings[2].detail


def test_driver_too_old() -> None:
    probe = {**HEALTHY, "cuda_available": False, "devices": [],
             "cuda_init_error": "The NVIDIA driver on your system is too old (found version 11040)."}
    findings = rules.torch_findings(probe)
    cuda = next(f for f in findings if f.check == "cuda")
    assert cuda.status == "warn" and "driver is too old" in cuda.detail
    assert "update the NVIDIA driver" in cuda.fix and "cu118" in cuda.fix
    assert rules.exit_code(rules.torch_findings(probe, require_cuda=True)) == 1


def test_cpu_only_wheel_on_gpu_machine_and_hidden_devices() -> None:
    cpu_wheel = {**HEALTHY, "cuda_version": None, "cuda_available": False, "devices": []}
    cuda = next(f for f in rules.torch_findings(cpu_wheel) if f.check == "cuda")
    assert "CPU-only" in cuda.detail and "--index-url" in cuda.fix
    hidden = {**HEALTHY, "cuda_available": False, "devices": [], "env": {"CUDA_VISIBLE_DEVICES": ""}}
    cuda = next(f for f in rules.torch_findings(hidden) if f.check == "cuda")
    assert "hides every GPU" in cuda.detail and "unset CUDA_VISIBLE_DEVICES" in cuda.fix


def test_arch_not_in_wheel() -> None:
    blackwell = {**RTX3060, "name": "NVIDIA B200", "capability": [10, 0]}
    findings = rules.torch_findings({**HEALTHY, "devices": [blackwell], "arch_list": ["sm_80", "sm_86", "sm_90"]})
    arch = next(f for f in findings if f.check == "gpu 0 arch")
    assert arch.status == "fail" and "needs sm_100" in arch.detail and "pip install torch" in arch.fix


def test_turing_has_no_bf16() -> None:
    turing = {**RTX3060, "name": "NVIDIA GeForce RTX 2080", "capability": [7, 5], "bf16": False}
    findings = rules.torch_findings({**HEALTHY, "devices": [turing]})
    precision = next(f for f in findings if f.check == "gpu 0 precision")
    assert precision.status == "warn" and "fp32" in precision.fix
    measured = {"device": "cuda", "batch_size": 2, "accumulate": 2, "precision": "bf16", "total_gb": 8.0,
                "bf16_supported": False, "fits": {"1": True, "2": True, "4": True}, "peak_gb": 5.0}
    advice = rules.recipe_findings(measured)
    assert any(f.check == "recipe precision" and f.status == "fail" and "fp32" in f.fix for f in advice)


def test_oom_at_batch_4_advises_batch_2_accumulate_2() -> None:
    measured = {"device": "cuda", "batch_size": 4, "accumulate": 1, "precision": "bf16", "total_gb": 11.8,
                "bf16_supported": True, "fits": {"1": True, "2": True, "4": False, "8": False},
                "oom_message": "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR: FIND was unable to find an engine"}
    memory = rules.recipe_findings(measured)[0]
    assert memory.status == "fail"
    assert memory.fix == "set train.batch_size = 2 and train.accumulate = 2 (same effective batch)"
    error = rules.recipe_findings({"error": "RuntimeError: FIND was unable to find an engine to execute this computation"})[0]
    assert "halve train.batch_size and double train.accumulate" in error.fix


def test_hung_probe_is_reported_not_waited_on() -> None:
    start = time.perf_counter()
    result = probes.run_probe("import time; time.sleep(30)", timeout=1.0)
    assert time.perf_counter() - start < 10
    assert result == {"status": "timeout", "timeout": 1.0}
    finding = rules.torch_findings(result)[0]
    assert finding.status == "fail" and "hung" in finding.detail


def test_system_rules() -> None:
    findings = rules.system_findings({"cpu_count": 2, "shm_gb": 0.06, "disk_free_gb": 2.0, "env": {"CUDA_LAUNCH_BLOCKING": "1"}}, workers=4)
    by_check = {f.check: f for f in findings}
    assert by_check["data loader"].fix == "set workers = 1"
    assert by_check["/dev/shm"].status == "warn" and "--shm-size" in by_check["/dev/shm"].fix
    assert by_check["disk"].status == "warn"
    assert by_check["CUDA_LAUNCH_BLOCKING"].status == "warn"


def test_doctor_on_this_machine() -> None:
    start = time.perf_counter()
    proc = run_dbtk("doctor", "--json")
    assert time.perf_counter() - start < 10
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    checks = {f["check"]: f for f in report["findings"]}
    assert report["ok"] and checks["torch"]["status"] == "ok"
    assert "CUDA not available" in checks["cuda"]["detail"]
    assert checks["plugins"]["status"] == "ok"
    required = run_dbtk("doctor", "--json", "--require-cuda")
    assert required.returncode == 1
