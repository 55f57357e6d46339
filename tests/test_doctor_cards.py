"""dbtk doctor on simulated GPUs: the torch probe's own code runs against a fake ``torch.cuda`` (tests/fake_cuda.py)
for a table of real cards and real wheels' arch lists, and for the ways CUDA fails; its results go through the rules.

The verdict table in docs/doctor.md is checked against what the doctor says, and the doctor's arch rule against
torch's own (``torch.cuda._code_compatible_with_device``).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from dbtk.doctor import probe, probes, rules
from tests.conftest import REPO, run_dbtk
from tests.fake_cuda import CARDS, WHEELS, Card, Wheel, fake_torch, nvidia_smi, write_fake_torch_package


def healthy_smoke(_torch: Any) -> dict[str, Any]:
    return {"smoke_max_diff": 2e-6}


def doctor_on(wheel: Wheel, cards: list[Card], *, smoke: dict[str, Any] | None = None, run: Any = None, **options: Any) -> tuple[dict[str, Any], list[rules.Finding]]:
    """The torch probe's result on the simulated machine, and the doctor's findings from it."""
    result = probe.torch_report(fake_torch(wheel, cards, **options), smoke=(lambda _t: smoke) if smoke else healthy_smoke, run=run or nvidia_smi())
    return result, rules.torch_findings(result)


def by_check(findings: list[rules.Finding]) -> dict[str, rules.Finding]:
    return {f.check: f for f in findings}


# ------------------------------------------------------------------------------------------------ the card table
def torch_says_runs(wheel: Wheel, card: Card) -> bool:
    """Torch's own rule for its cubins (what it warns about at CUDA start-up), plus PTX compiled forward."""
    import torch

    cc = card.capability[0] * 10 + card.capability[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sm_37 is no capability torch 2.14 knows: it warns, then applies the general rule
        cubins = any(torch.cuda._code_compatible_with_device(cc, torch.cuda._extract_arch_version(a)) for a in wheel.arch_list if a.startswith("sm_"))
    return cubins


def ptx_runs(wheel: Wheel, card: Card) -> bool:
    cc = card.capability[0] * 10 + card.capability[1]
    return any(re.fullmatch(r"compute_(\d+)", a) and int(a[8:]) <= cc for a in wheel.arch_list)


CASES = [(card, wheel) for card in CARDS for wheel in WHEELS]


@pytest.mark.parametrize(("card_name", "wheel_name"), CASES, ids=[f"{c}-{w}" for c, w in CASES])
def test_card_against_wheel(card_name: str, wheel_name: str) -> None:
    card, wheel = CARDS[card_name], WHEELS[wheel_name]
    _result, findings = doctor_on(wheel, [card])
    found = by_check(findings)
    arch = found.get("gpu 0 arch")
    if torch_says_runs(wheel, card):
        assert arch is None and rules.exit_code(findings) == 0, [f for f in findings if f.status != rules.OK]
    elif ptx_runs(wheel, card):
        assert arch is not None and arch.status == rules.WARN and "PTX" in arch.detail
        assert rules.exit_code(findings) == 0
    else:
        assert arch is not None and arch.status == rules.FAIL and f"needs sm_{card.capability[0]}{card.capability[1]}" in arch.detail
    if arch is not None:
        index = re.search(r"download\.pytorch\.org/whl/cu(\d+)", arch.fix)
        if index:  # the same torch release, from the index of a CUDA build torch lists with kernels for this card
            assert f"torch=={wheel.version.split('+')[0]} " in arch.fix
            cuda = f"{index[1][:-1]}.{index[1][-1]}"
            build = wheel.releases[cuda]["x86_64"]
            assert torch_says_runs(Wheel("", cuda, tuple(f"sm_{cc}" for cc in sorted(build)), ""), card)
        else:
            assert "pytorch.org/get-started" in arch.fix
    precision = found["gpu 0 precision"]
    assert precision.status == (rules.OK if card.capability >= (8, 0) else rules.WARN)


def verdict(findings: list[rules.Finding]) -> str:
    """The cell docs/doctor.md shows: ok, PTX (a warning), FAIL, with the pytorch.org build the fix names."""
    arch = by_check(findings).get("gpu 0 arch")
    if arch is None:
        return "ok"
    index = re.search(r"download\.pytorch\.org/whl/(cu\d+)", arch.fix)
    status = "PTX" if arch.status == rules.WARN else "FAIL"
    return f"{status} → {index[1]}" if index else status


def docs_table(marker: str) -> list[list[str]]:
    """Rows of the table between ``<!-- marker -->`` and ``<!-- /marker -->`` in docs/doctor.md (header first)."""
    text = (REPO / "docs" / "doctor.md").read_text()
    block = text.split(f"<!-- {marker}:", 1)[1].split(f"<!-- /{marker} -->", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows if not set(row) <= set("|-: ")]


def test_docs_card_table_is_what_the_doctor_says() -> None:
    header, *rows = docs_table("cards")
    assert header[:3] == ["card", "compute", "bf16"] and header[3:] == list(WHEELS)
    assert [row[0] for row in rows] == list(CARDS)
    for name, compute, bf16, *cells in rows:
        card = CARDS[name]
        assert compute == f"{card.capability[0]}.{card.capability[1]}"
        assert bf16 == ("native" if card.capability >= (8, 0) else "emulated: warn")
        said = [verdict(doctor_on(wheel, [card])[1]) for wheel in WHEELS.values()]
        assert cells == said, f"docs/doctor.md row {name}: documented {cells}, the doctor says {said}"


def test_docs_wheel_table_lists_the_simulated_arch_lists() -> None:
    header, *rows = docs_table("wheels")
    assert header == ["wheel", "torch.cuda.get_arch_list()", "source"]
    assert {row[0]: row[1].split() for row in rows} == {name: list(wheel.arch_list) for name, wheel in WHEELS.items()}


# ------------------------------------------------------------------------------------------------ arch entries
def test_arch_rule_reads_every_entry_form() -> None:
    assert rules.parse_arch("compute_90a") == rules.Arch(True, 90, "a")
    assert rules.parse_arch("sm_100f") == rules.Arch(False, 100, "f")
    assert rules.parse_arch("gfx90a") is None  # a ROCm entry: no verdict, never a crash
    assert rules.arch_coverage(["gfx90a", "gfx942"], 90, None) == ("unknown", [])
    assert rules.arch_coverage(["sm_80", "sm_90a"], 90, (12, 8)) == ("native", ["sm_90a"])
    assert rules.arch_coverage(["sm_90a"], 100, (12, 8)) == ("none", [])  # arch-specific: 9.0 exactly
    assert rules.arch_coverage(["sm_80", "sm_86"], 89, (12, 6)) == ("native", ["sm_80", "sm_86"])
    assert rules.arch_coverage(["sm_90", "compute_90"], 120, (12, 8)) == ("ptx", ["compute_90"])
    assert rules.arch_coverage(["compute_90a"], 100, (12, 8)) == ("none", [])
    assert rules.arch_coverage(["compute_100f"], 103, (12, 9)) == ("ptx", ["compute_100f"])
    assert rules.arch_coverage(["compute_100f"], 120, (12, 9)) == ("none", [])
    # Jetson Orin (8.7) runs sm_80/sm_86 cubins only from CUDA 13.2 on; Thor's 10.1 is 11.0 now.
    assert rules.arch_coverage(["sm_80", "sm_86"], 87, (12, 6))[0] == "none"
    assert rules.arch_coverage(["sm_80", "sm_86"], 87, (13, 2))[0] == "native"
    assert rules.arch_coverage(["sm_101"], 110, (13, 0))[0] == "native"
    findings = rules.torch_findings({**doctor_on(WHEELS["2.14.1+cu130"], [CARDS["H100"]])[0], "arch_list": ["sm_80", "compute_90a", "gfx90a"]})
    assert rules.exit_code(findings) == 0  # 'compute_90a' once crashed the parse


# ------------------------------------------------------------------------------------------------ bf16, memory, queries
def test_bf16_emulation_is_not_bf16() -> None:
    t4 = fake_torch(WHEELS["2.14.1+cu130"], [CARDS["T4"]])
    assert t4.cuda.is_bf16_supported() is True  # what torch says when emulation counts
    assert probe.native_bf16(t4.cuda, 0, 7) is False
    result, findings = doctor_on(WHEELS["2.14.1+cu130"], [CARDS["T4"]])
    assert result["devices"][0]["bf16"] is False
    assert by_check(findings)["gpu 0 precision"].status == rules.WARN and "emulated" in by_check(findings)["gpu 0 precision"].detail
    old_torch = fake_torch(WHEELS["2.0.1+cu118"], [CARDS["A100"], CARDS["V100"]], bf16_kwarg=False)
    assert [probe.native_bf16(old_torch.cuda, index, major) for index, major in ((0, 8), (1, 7))] == [True, False]


def test_nearly_full_gpu_warns_and_names_who_holds_it() -> None:
    listing = ("GPU-00000000-5c3b-11ee-8c99-0242ac120002, 4242, /usr/bin/python3, 11264\n"
               "GPU-ffffffff-0000-0000-0000-000000000000, 777, /opt/other/app, 2048\n")
    result, findings = doctor_on(WHEELS["2.14.1+cu130"], [CARDS["RTX 3060"]], free_share=0.025, run=nvidia_smi(processes=listing))
    memory = by_check(findings)["gpu 0 memory"]
    assert memory.status == rules.WARN and "only 0.3 of 12.0 GB free" in memory.detail
    assert "python3 (pid 4242, 11.0 GB)" in memory.detail and "777" not in memory.detail  # another GPU's process
    assert "CUDA_VISIBLE_DEVICES" in memory.fix
    _, roomy = doctor_on(WHEELS["2.14.1+cu130"], [CARDS["RTX 3060"]], free_share=0.5)
    assert "gpu 0 memory" not in by_check(roomy)


@pytest.mark.parametrize(("method", "message", "check", "expected"), [
    ("get_device_properties", "CUDA error: CUDA-capable device(s) is/are busy or unavailable", "gpu 0", "exclusive-process"),
    ("mem_get_info", "CUDA error: out of memory", "gpu 0 memory", "the GPU is full before training starts"),
    ("device_count", "CUDA error: unknown error", "cuda", "CUDA_LAUNCH_BLOCKING"),
])
def test_a_failing_cuda_query_is_a_cuda_finding(method: str, message: str, check: str, expected: str) -> None:
    _, findings = doctor_on(WHEELS["2.14.1+cu130"], [CARDS["RTX 4090"]], errors={method: message})
    finding = by_check(findings)[check]
    assert finding.status == rules.FAIL and message in finding.detail and expected in finding.fix
    assert by_check(findings)["torch"].status == rules.OK
    assert not any("does not import" in f.detail or "reinstall torch" in f.fix for f in findings)


def test_a_second_gpu_that_cannot_be_used_warns() -> None:
    finding = rules._device_findings(1, {"error": "RuntimeError: CUDA error: CUDA-capable device(s) is/are busy or unavailable"}, {})[0]
    assert finding.status == rules.WARN


# ------------------------------------------------------------------------------------------------ error messages
@pytest.mark.parametrize(("message", "expected"), [
    ("CUDA error: no kernel image is available for execution on the device", "--index-url https://download.pytorch.org/whl/cu130"),
    ("CUDA error: the provided PTX was compiled with an unsupported toolchain.", "update the NVIDIA driver to one for CUDA 12.6 or newer"),
    ("cuDNN error: CUDNN_STATUS_NOT_INITIALIZED", "LD_LIBRARY_PATH"),
    ("cuDNN error: CUDNN_STATUS_ARCH_MISMATCH", "torch's own cuDNN"),
    ("CUDNN_STATUS_NOT_SUPPORTED: FIND was unable to find an engine to execute this computation", "cannot run even a small convolution"),
])
def test_smoke_test_errors_get_their_own_fix(message: str, expected: str) -> None:
    _, findings = doctor_on(WHEELS["2.14.1+cu126"], [CARDS["RTX 5090"]], smoke={"smoke_error": f"RuntimeError: {message}"})
    smoke = by_check(findings)["gpu smoke test"]
    assert smoke.status == rules.FAIL and expected in smoke.fix
    assert "batch_size" not in smoke.fix  # a 64-image conv on a healthy GPU never needs a smaller batch


def test_the_real_smoke_test_compares_two_devices() -> None:
    import torch

    result = probe._smoke_test(torch)  # on a machine without a GPU, moving to "cuda" is the error
    assert "smoke_max_diff" in result if torch.cuda.is_available() else result["smoke_error"].startswith(("RuntimeError", "AssertionError"))
    tensors = [torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(5, 5)]
    cpu = probe._conv_and_matmul(torch.nn.functional.conv2d, *tensors, "cpu")
    assert [t.shape for t in cpu] == [(2, 4, 8, 8), (4, 3, 3, 3), (5, 5)]


def test_nccl_missing_says_what_really_happens() -> None:
    _, two = doctor_on(WHEELS["2.14.1+cu130"], [CARDS["A100"], CARDS["A100"]], nccl=False)
    nccl = by_check(two)["nccl"]
    assert nccl.status == rules.WARN and "cannot start" in nccl.detail and "single-GPU training is unaffected" in nccl.detail
    assert "gloo" not in nccl.detail + nccl.fix
    _, one = doctor_on(WHEELS["2.14.1+cu130"], [CARDS["A100"]], nccl=False)
    assert by_check(one)["nccl"].status == rules.OK


# ------------------------------------------------------------------------------------------------ the driver
def test_driver_version_is_collected() -> None:
    result, findings = doctor_on(WHEELS["2.14.1+cu126"], [CARDS["RTX 3060"]], run=nvidia_smi(driver="550.54.14"), driver_cuda=12040)
    assert result["driver_version"] == "550.54.14" and result["driver_cuda"] == "12.4"
    assert "driver 550.54.14 (CUDA 12.4)" in by_check(findings)["cuda"].detail
    no_smi, _ = doctor_on(WHEELS["2.14.1+cu126"], [CARDS["RTX 3060"]], run=lambda _command: None, driver_cuda=None)
    assert "driver_version" not in no_smi and "driver_cuda" not in no_smi and no_smi["nvidia_smi"] is False


TOO_OLD = "The NVIDIA driver on your system is too old (found version 12040). Please update your GPU driver"


def test_driver_too_old_advice_comes_from_the_versions() -> None:
    result, findings = doctor_on(WHEELS["2.14.1+cu130"], [CARDS["RTX 4090"]], available=False, init_error=TOO_OLD, driver_cuda=None)
    assert result["driver_cuda"] == "12.4"  # read from torch's own message when the driver API is not reachable
    cuda = by_check(findings)["cuda"]
    assert "driver is too old for CUDA 13.0" in cuda.detail
    assert cuda.fix.startswith("update the NVIDIA driver to one for CUDA 13.0 or newer (this one supports CUDA 12.4)")
    assert "pip install torch==2.14.1 torchvision==" in cuda.fix and cuda.fix.endswith("--index-url https://download.pytorch.org/whl/cu126")
    # torch 2.11 lists no builds (no table here): no index is named, none can lack the installed version
    _, findings = doctor_on(WHEELS["2.11.0+cu128"], [CARDS["RTX 4090"]], available=False, init_error=TOO_OLD, driver_cuda=None)
    assert "--index-url" not in by_check(findings)["cuda"].fix and "pytorch.org/get-started" in by_check(findings)["cuda"].fix


def test_install_advice_never_names_an_index_without_this_torch() -> None:
    for wheel in WHEELS.values():
        for card in CARDS.values():
            for finding in doctor_on(wheel, [card])[1]:
                for version in re.findall(r"torch==(\S+)", finding.fix):
                    assert version == wheel.version.split("+")[0] and rules.INDEXED_VERSION.match(wheel.version), finding.fix


# ------------------------------------------------------------------------------------------------ crashes, in a real probe process
def probe_with_fake_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: dict[str, Any]) -> dict[str, Any]:
    for name, value in write_fake_torch_package(tmp_path, scenario).items():
        monkeypatch.setenv(name, value)
    return probes.torch_probe(timeout=60)


def test_sigill_importing_torch_is_not_a_missing_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = probe_with_fake_torch(tmp_path, monkeypatch, {"crash_at_import": "SIGILL"})
    assert result == {"crash": "SIGILL", "stage": "importing torch"}
    finding = rules.torch_findings(result)[0]
    assert finding.status == rules.FAIL and "crashed with SIGILL (illegal instruction) while importing torch" in finding.detail
    assert "CPU instruction" in finding.fix and "does not import" not in finding.detail


@pytest.mark.parametrize(("where", "stage"), [("is_available", "initialising CUDA"), ("get_device_properties", "querying GPU 0")])
def test_sigsegv_in_the_driver_names_the_stage(where: str, stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = probe_with_fake_torch(tmp_path, monkeypatch, {"wheel": "2.14.1+cu130", "cards": ["L4"], "crash": {where: "SIGSEGV"}})
    assert result == {"crash": "SIGSEGV", "stage": stage}
    finding = rules.torch_findings(result)[0]
    assert f"SIGSEGV (segmentation fault) while {stage}" in finding.detail and "NVIDIA driver crashed" in finding.fix


def test_probe_process_on_a_card_its_wheel_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = probe_with_fake_torch(tmp_path, monkeypatch, {"wheel": "2.14.1+cu126", "cards": ["RTX 5090"], "driver_cuda": 12080,
                                                           "smoke_error": "CUDA error: no kernel image is available for execution on the device"})
    found = by_check(rules.torch_findings(result))
    assert found["gpu 0 arch"].status == rules.FAIL and found["gpu 0 arch"].fix.endswith("--index-url https://download.pytorch.org/whl/cu130 "
                                                                                         "(after updating the NVIDIA driver to one for CUDA 13.0 or newer; this one supports CUDA 12.8)")
    assert "no kernels for the GPU's architecture" in found["gpu smoke test"].fix


def test_doctor_reports_a_crashing_torch(tmp_path: Path) -> None:
    env = write_fake_torch_package(tmp_path, {"crash_at_import": "SIGILL"})
    proc = run_dbtk("doctor", "--json", env=env)
    assert proc.returncode == 1, proc.stderr
    torch = next(f for f in json.loads(proc.stdout)["findings"] if f["check"] == "torch")
    assert "SIGILL" in torch["detail"] and "CPU instruction" in torch["fix"]
    assert "Traceback" not in proc.stderr
