"""dbtk doctor: rules on recorded probe results, hung probes, and the real run on this machine."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dbtk.doctor import probe, probes, rules
from tests.conftest import REPO, run_dbtk

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
    old = {**HEALTHY, "cuda_available": False, "devices": [],
           "cuda_init_error": "The NVIDIA driver on your system is too old (found version 11040)."}
    findings = rules.torch_findings(old)
    cuda = next(f for f in findings if f.check == "cuda")
    assert cuda.status == "warn" and "driver is too old" in cuda.detail
    assert cuda.fix.startswith("update the NVIDIA driver to one for CUDA 12.6 or newer")
    assert "--index-url" not in cuda.fix  # no build list, no driver version: naming an index could name one without torch 2.14.1
    assert rules.exit_code(rules.torch_findings(old, require_cuda=True)) == 1
    known = {**old, "driver_cuda": "11.4", "release_builds": {"11.8": [50, 60, 70, 75, 80, 86, 90], "12.6": [50, 60, 70, 75, 80, 86, 90]}}
    fix = next(f for f in rules.torch_findings(known) if f.check == "cuda").fix
    assert fix.endswith("or install the CUDA 11.8 build of this torch: pip install torch==2.14.1 --index-url https://download.pytorch.org/whl/cu118")


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
    assert arch.status == "fail" and "needs sm_100" in arch.detail and "arch list covers sm_100" in arch.fix
    ada = {**RTX3060, "name": "NVIDIA GeForce RTX 4090", "capability": [8, 9]}  # runs the wheel's sm_86 kernels
    findings = rules.torch_findings({**HEALTHY, "devices": [ada]})
    assert rules.exit_code(findings) == 0 and not any(f.check == "gpu 0 arch" for f in findings)


def test_turing_has_no_bf16() -> None:
    turing = {**RTX3060, "name": "NVIDIA GeForce RTX 2080", "capability": [7, 5], "bf16": False}
    findings = rules.torch_findings({**HEALTHY, "devices": [turing]})
    precision = next(f for f in findings if f.check == "gpu 0 precision")
    assert precision.status == "warn" and "fp32" in precision.fix
    measured = {"device": "cuda", "batch_size": 2, "accumulate": 2, "precision": "bf16", "total_gb": 8.0,
                "bf16_supported": False, "fits": {"1": True, "2": True, "4": True}, "peak_gb": 5.0}
    advice = rules.recipe_findings(measured)  # bf16 runs, emulated: slow, not broken
    assert any(f.check == "recipe precision" and f.status == "warn" and "emulates" in f.detail and "fp32" in f.fix for f in advice)


def test_oom_at_batch_4_advises_batch_2_accumulate_2() -> None:
    measured = {"device": "cuda", "batch_size": 4, "accumulate": 1, "precision": "bf16", "total_gb": 11.8,
                "bf16_supported": True, "fits": {"1": True, "2": True, "4": False, "8": False},
                "oom_message": "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR: FIND was unable to find an engine"}
    memory = rules.recipe_findings(measured)[0]
    assert memory.status == "fail"
    assert memory.fix == "set train.batch_size = 2 and train.accumulate = 2 (same effective batch)"
    error = rules.recipe_findings({"error": "RuntimeError: FIND was unable to find an engine to execute this computation"})[0]
    assert "halve train.batch_size and double train.accumulate" in error.fix
    held = rules.recipe_findings({**measured, "free_gb": 3.0})[0]
    assert "only 3.0 of 11.8 GB were free" in held.detail


def test_only_out_of_memory_means_does_not_fit() -> None:
    import torch

    def step(size: int) -> float:
        if size >= 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 0.5 * size

    assert probe.fit_batches(step, [1, 2, 4, 8], 4) == {"fits": {1: True, 2: True, 4: False, 8: False}, "oom_message": "CUDA out of memory. Tried to allocate 2.00 GiB"}
    cublas = probe.fit_batches(lambda size: (_ for _ in ()).throw(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED: out of memory")) if size > 1 else 1.0, [1, 2], 2)
    assert cublas["fits"] == {1: True, 2: False}

    def broken(size: int) -> float:
        raise RuntimeError("cuDNN error: CUDNN_STATUS_ARCH_MISMATCH")

    measured = {"device": "cuda", "batch_size": 4, "accumulate": 1, "precision": "fp32", "total_gb": 11.8, "bf16_supported": True,
                **probe.fit_batches(broken, [1, 2, 4, 8], 4)}
    assert measured["fits"] == {} and measured["step_error"] == {"batch": 1, "message": "RuntimeError: cuDNN error: CUDNN_STATUS_ARCH_MISMATCH"}
    finding = rules.recipe_findings(json.loads(json.dumps(measured)))[0]
    assert finding.status == "fail" and "fails at batch 1" in finding.detail
    assert "torch's own cuDNN" in finding.fix and "batch_size" not in finding.fix and "image_size" not in finding.fix


def test_hung_probe_is_reported_not_waited_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "torch.py").write_text("import time\ntime.sleep(30)\n")  # a torch whose import hangs, as on a wedged driver
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    start = time.perf_counter()
    result = probes.torch_probe(timeout=1.0)
    assert time.perf_counter() - start < 10
    assert result == {"status": "timeout", "timeout": 1.0, "stage": "importing torch"}
    finding = rules.torch_findings(result)[0]
    assert finding.status == "fail" and "hung for 1.0 s while importing torch" in finding.detail


def test_a_probe_that_dies_or_prints_no_json_is_a_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "torch.py").write_text("import sys\nprint('half a line', end='', file=sys.__stdout__)\nsys.exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    failed = probes.torch_probe(timeout=60)
    assert failed == {"error": "probe exited with 3: no output"}
    finding = rules.torch_findings(failed)[0]
    assert "the torch probe failed" in finding.detail and "does not import" not in finding.detail
    monkeypatch.setattr(probes, "PROBE_COMMAND", (sys.executable, "-c", "print('not json')"))
    assert probes.run_probe("torch", timeout=60) == {"error": "the probe printed no JSON result: not json"}


def test_gpu_probes_run_one_at_a_time_beside_the_cpu_probes() -> None:
    lock, active, most, log = threading.Lock(), [0], [0], []

    def gpu(name: str) -> list[str]:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
            log.append(f"start {name}")
        time.sleep(0.2)
        with lock:
            active[0] -= 1
            log.append(f"end {name}")
        return [name]

    def cpu() -> list[str]:
        time.sleep(0.3)
        return ["cpu"]

    start = time.perf_counter()
    jobs = [(name, lambda name=name: gpu(name)) for name in ("torch", "recipe", "recipe run")]
    results = list(probes.run_jobs(jobs, [("libraries", cpu), ("plugins", cpu)]))
    assert most[0] == 1, log  # never two GPU probes at once
    assert log == ["start torch", "end torch", "start recipe", "end recipe", "start recipe run", "end recipe run"]
    assert time.perf_counter() - start < 0.2 * 3 + 0.25  # the CPU probes ran beside them
    assert sorted(name for name, _, _ in results) == ["libraries", "plugins", "recipe", "recipe run", "torch"]
    assert results[-1][2] == [] and all(isinstance(pending, list) for _, _, pending in results)


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
    table = run_dbtk("doctor")  # on a pipe: the verdict on a line of its own, not glued to the table's border
    assert table.returncode == 0 and "✓ training can run on the CPU" in table.stdout
    assert any(line.startswith("✓ training can run") for line in table.stdout.splitlines()), table.stdout[-300:]


# ------------------------------------------------------------------------------------------------ --steps N
HEALTHY_RUN_3060 = {
    "steps": 50, "workers": 4, "batch_size": 2, "precision": "bf16", "device": "cuda", "losses_logged": 50, "losses_finite": 50,
    "bad_steps": 0, "overflow_steps": 0, "loader_images_per_second": 96.0, "train_images_per_second": 31.5, "data_wait_fraction": 0.04,
    "skipped": {}, "peak_gb": 7.9, "total_gb": 11.7, "tf32": {"cudnn": True, "capable": True, "override": None},
    "cudnn_benchmark": {"off": {"ms": 118.0}, "on": {"ms": 92.0}},
}


def test_run_rules_healthy_gpu() -> None:
    found = {f.check: f for f in rules.run_findings(HEALTHY_RUN_3060, cpus=8)}
    assert all(f.status == rules.OK for f in found.values())
    assert "finite on all 50 of 50 steps" in found["recipe loss"].detail
    assert "96.0 images/s with 4 workers (24.0 per worker)" in found["recipe data loading"].detail
    assert "peak 7.9 of 11.7 GB" in found["recipe memory"].detail
    assert "118 ms with cudnn.benchmark off, 92 ms on" in found["cudnn benchmark"].detail
    assert found["cudnn benchmark"].fix.startswith("set train.cudnn_benchmark = true")  # 92 ms on vs 118 off
    assert "tf32" not in found  # bf16: the convolutions do not run in fp32


def test_fp16_scaler_overflows_pass_a_non_finite_loss_fails() -> None:
    fp16 = {**HEALTHY_RUN_3060, "precision": "fp16", "overflow_steps": 7}
    loss = {f.check: f for f in rules.run_findings(fp16, cpus=8)}["recipe loss"]
    assert loss.status == rules.OK and "7 fp16 scaler overflow steps skipped" in loss.detail
    real = {f.check: f for f in rules.run_findings({**fp16, "bad_steps": 1}, cpus=8)}["recipe loss"]
    assert real.status == rules.FAIL and "1 of 50 steps had a non-finite loss" in real.detail
    never_fits = {f.check: f for f in rules.run_findings({**fp16, "overflow_steps": 40}, cpus=8)}["recipe loss"]
    assert never_fits.status == rules.WARN and "overflowed on 40 steps" in never_fits.detail and "bf16" in never_fits.fix


def test_run_summary_reads_the_trainers_counts() -> None:
    line = {"loss": 1.2, "images_per_second": 30.0, "data_wait_fraction": 0.1}
    history = [{**line, "step": 1, "bad_steps": 0, "overflow_steps": 1}, {**line, "step": 2, "bad_steps": 0, "overflow_steps": 3},
               {"step": 2, "val/hmean": 0.5}]
    summary = probe._summary(SimpleNamespace(history=history, skipped={}))
    assert (summary["bad_steps"], summary["overflow_steps"], summary["losses_finite"]) == (0, 3, 2)
    older_trainer = probe._summary(SimpleNamespace(history=[{**line, "bad_steps": 2}, {**line, "loss": float("nan"), "bad_steps": 3}], skipped={}))
    assert (older_trainer["bad_steps"], older_trainer["overflow_steps"], older_trainer["losses_finite"]) == (3, 0, 1)


def test_tf32_advice_is_about_convolutions() -> None:
    def tf32(**values: object) -> rules.Finding | None:
        run = {**HEALTHY_RUN_3060, "precision": "fp32", "tf32": {"cudnn": True, "capable": True, "override": None, **values}}
        return {f.check: f for f in rules.run_findings(run, cpus=8)}.get("tf32")

    on = tf32()
    assert on.status == rules.OK and "convolutions run in TF32" in on.detail and "matmul" not in on.fix
    off = tf32(cudnn=False)
    assert off.status == rules.WARN and "torch.backends.cudnn.allow_tf32 = False" in off.fix
    assert "NVIDIA_TF32_OVERRIDE=0" in tf32(override="0").detail
    assert tf32(capable=False) is None  # Turing and older have no TF32


def test_cudnn_benchmark_advice_follows_the_recipe_setting() -> None:
    def advice(setting: bool, benchmark: dict) -> rules.Finding:
        run = {**HEALTHY_RUN_3060, "cudnn_benchmark": benchmark, "benchmark_setting": setting}
        return {f.check: f for f in rules.run_findings(run, cpus=8)}["cudnn benchmark"]

    faster, failing = {"off": {"ms": 118.0}, "on": {"ms": 92.0}}, {"off": {"ms": 118.0}, "on": {"error": "CUDNN_STATUS_INTERNAL_ERROR"}}
    assert advice(False, failing).status == rules.WARN and advice(False, failing).fix.startswith("set train.cudnn_benchmark = false")
    assert advice(False, faster).fix.startswith("set train.cudnn_benchmark = true")
    assert advice(True, failing).status == rules.FAIL and advice(True, failing).fix.startswith("set train.cudnn_benchmark = false")
    assert advice(True, {"off": {"ms": 100.0}, "on": {"ms": 99.0}}).fix.startswith("set train.cudnn_benchmark = false")


def test_a_step_at_the_loaders_speed_or_faster_than_it_is_said() -> None:
    """On a CPU the loader's workers take the step's cores: a starved step is slow rather than waiting, so training
    at the loader's own rate warns too; training far faster than the loader means prefetched batches fed a run
    too short to measure it. Skipped samples name the clean-data command for the recipe's own data."""
    cpu = {**HEALTHY_RUN_3060, "device": "cpu", "workers": 1, "loader_images_per_second": 8.0, "train_images_per_second": 8.4,
           "data_wait_fraction": 0.12, "skipped": {"corrupt": 1}, "clean_data": "dbtk clean-data data/train --format icdar2015 --check",
           "prefetched": 4}
    found = {f.check: f for f in rules.run_findings(cpu, cpus=8)}
    assert found["recipe data loading"].status == rules.WARN
    assert "training runs at the data loader's speed" in found["recipe data loading"].detail
    assert found["recipe data loading"].fix.startswith("raise train.workers")
    assert "1 sample skipped (corrupt 1)" in found["recipe samples"].detail
    assert found["recipe samples"].fix == "see which files with: dbtk clean-data data/train --format icdar2015 --check"
    short = {f.check: f for f in rules.run_findings({**cpu, "train_images_per_second": 49.0, "loader_images_per_second": 4.3}, cpus=8)}
    assert "too short to measure the loader" in short["recipe data loading"].detail and "4" in short["recipe data loading"].detail
    assert short["recipe data loading"].fix == "run more --steps"
    relaxed = {f.check: f for f in rules.run_findings({**cpu, "train_images_per_second": 5.0}, cpus=8)}
    assert relaxed["recipe data loading"].status == rules.OK


def test_run_rules_problems_each_with_a_fix() -> None:
    starving = {**HEALTHY_RUN_3060, "workers": 1, "data_wait_fraction": 0.55, "skipped": {"corrupt": 3, "truncated": 1},
                "losses_finite": 47, "bad_steps": 3, "cudnn_benchmark": {"off": {"ms": 120.0}, "on": {"error": "CUDNN_STATUS_NOT_SUPPORTED: FIND was unable to find an engine to execute this computation"}}}
    found = {f.check: f for f in rules.run_findings(starving, cpus=8)}
    assert found["recipe loss"].status == rules.FAIL and "3 of 50 steps" in found["recipe loss"].detail and "lower train.lr" in found["recipe loss"].fix
    assert found["recipe data loading"].status == rules.WARN and "55%" in found["recipe data loading"].detail
    assert "raise train.workers (this machine has 8 CPUs)" in found["recipe data loading"].fix
    assert found["recipe samples"].status == rules.WARN and "corrupt 3, truncated 1" in found["recipe samples"].detail
    assert found["cudnn benchmark"].status == rules.WARN and "halve train.batch_size and double train.accumulate" in found["cudnn benchmark"].fix

    crashed = rules.run_findings({"steps": 50, "error": "RuntimeError: CUDA error: an illegal memory access was encountered"})
    assert crashed[0].status == rules.FAIL and "smaller batch + accumulation" in crashed[0].fix
    died = rules.run_findings({"crash": "SIGSEGV", "stage": "training 50 steps on the GPU"})[0]
    assert died.status == rules.FAIL and "run probe crashed with SIGSEGV" in died.detail and "NVIDIA driver" in died.fix
    died_on_cpu = rules.recipe_findings({"crash": "SIGSEGV", "stage": "measuring training steps on the CPU"})[0]
    assert "PYTHONFAULTHANDLER=1" in died_on_cpu.fix


def tiny_recipe(folder: Path) -> Path:
    """A recipe that trains in seconds on the CPU on 12 synthetic 64 px images."""
    folder.mkdir(parents=True)
    recipe = folder / "tiny.toml"
    recipe.write_text(
        'name = "tiny"\n[model.decoder]\nchannels = 16\n[data]\n'
        'format = { name = "synthetic", count = 12, width = 64, height = 64, min_height = 8, max_height = 16 }\n'
        'train = "train"\nimage_size = 64\n[train]\nbatch_size = 2\nworkers = 1\n'
    )
    return recipe


def test_doctor_runs_recipe_steps_on_cpu(tmp_path: Path) -> None:
    # Under a folder named STEPS: the probes once pasted the recipe path into program text, then replaced STEPS;
    # a quote and spaces in the path must travel as part of one argument too.
    recipe = tiny_recipe(tmp_path / "STEPS" / "it's a recipe")
    proc = run_dbtk("doctor", "--json", "--recipe", str(recipe), "--set", "name=RECIPE", "--steps", "2", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = {f["check"]: f for f in json.loads(proc.stdout)["findings"]}
    assert checks["recipe"]["status"] == "ok" and "training step at batch 2" in checks["recipe"]["detail"]
    assert checks["recipe loss"]["detail"] == "finite on all 2 of 2 steps"
    assert "images/s with 1 worker" in checks["recipe data loading"]["detail"]
    assert checks["recipe memory"]["status"] == "ok"
    no_recipe = run_dbtk("doctor", "--steps", "3")
    assert no_recipe.returncode == 2 and "--steps needs --recipe" in no_recipe.stderr


# ------------------------------------------------------------------------------------------------ the probe module
PROBE_RUNS = {
    "torch": ([], "version"),
    "versions": ([], "timm"),
    "plugins": (["--timeout", "30"], "components"),
    "measure": (["--set", "train.accumulate=2"], "seconds_per_step"),
    "run": (["--steps", "1"], "losses_logged"),
}


@pytest.mark.parametrize("name", sorted(PROBE_RUNS))
def test_each_probe_is_a_module_printing_one_json_object(name: str, tmp_path: Path) -> None:
    options, key = PROBE_RUNS[name]
    if name in ("measure", "run"):  # a path with a quote and spaces travels as one argument, untouched
        options = ["--recipe", str(tiny_recipe(tmp_path / "it's a \"recipe\" folder")), *options]
    proc = subprocess.run([sys.executable, "-m", "dbtk.doctor.probe", name, *options], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.splitlines()) == 1, proc.stdout
    result = json.loads(proc.stdout)
    assert isinstance(result, dict) and key in result and "error" not in result, result


def test_no_probe_is_program_text_in_a_string() -> None:
    """Probe code is importable Python run with ``-m``: nothing under dbtk/doctor hands a string to ``python -c``."""
    sources = [*sorted((REPO / "dbtk" / "doctor").glob("*.py")), REPO / "dbtk" / "cli" / "doctor.py"]
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value != "-c", f"{source.name}:{node.lineno} runs code given as a string ('-c')"
                assert not _is_program(node.value), f"{source.name}:{node.lineno} holds a program in a string"


def _is_program(text: str) -> bool:
    """Two or more Python statements (a probe kept as text); prose and one-line messages are not."""
    try:
        return "\n" in text.strip() and len(ast.parse(text).body) > 1
    except SyntaxError:
        return False
