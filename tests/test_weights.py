"""Published encoder weights through the Hugging Face hub cache, offline: never a network call, never a pickle.

Every test builds its own cache folder in the hub's layout (``models--timm--NAME/refs/main`` +
``snapshots/REV/model.safetensors``) from a randomly initialised timm model, points ``HF_HOME`` at it and sets
``HF_HUB_OFFLINE=1``; in-process tests also make any socket connection fail.
"""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path

import pytest
import torch

from dbtk import recipe as recipes
from dbtk.errors import DbtkError
from tests.conftest import run_dbtk

TAG = "resnet18.a1_in1k"  # timm's default pretrained tag for resnet18
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def published() -> dict[str, torch.Tensor]:
    """What the hub would serve for TAG: a full timm resnet18 (classifier included), randomly initialised."""
    import timm

    torch.manual_seed(7)
    return {k: v.clone() for k, v in timm.create_model("resnet18").state_dict().items()}


def hub_layout(home: Path, tag: str, files: dict[str, bytes]) -> Path:
    """``files`` as the snapshot of timm/TAG in the hub cache under HF_HOME ``home``; returns the snapshot folder."""
    repo = home / "hub" / f"models--timm--{tag}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for name, payload in files.items():
        (snapshot / name).write_bytes(payload)
    return snapshot


def safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(state, metadata={"format": "pt"})


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF_HOME, offline mode on, and no socket may connect; returns HF_HOME."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*_args: object) -> None:
        raise AssertionError("a test touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return home


def offline_env(home: Path) -> dict[str, str]:
    return {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "", "HUGGINGFACE_HUB_CACHE": ""}


def test_pretrained_true_and_tags_load_from_a_fake_hub_cache_offline(offline: Path, published: dict, tmp_path: Path) -> None:
    from dbtk.models.builder import build_model
    from dbtk.models.encoders import TimmEncoder

    hub_layout(offline, TAG, {"model.safetensors": safetensors_bytes(published), "config.json": b"{}"})
    encoder = TimmEncoder("resnet18", pretrained=True)
    assert torch.equal(encoder.body.layer3[0].conv1.weight, published["layer3.0.conv1.weight"])
    assert torch.equal(encoder.body.bn1.running_mean, published["bn1.running_mean"])

    # A tag in a recipe is resolved like a path (relative to the recipe), and still read as the tag.
    recipe_file = tmp_path / "recipes" / "r.toml"
    recipe_file.parent.mkdir()
    recipe_file.write_text(f'[model.encoder]\narch = "resnet18"\npretrained = "{TAG}"\n[model.decoder]\nchannels = 32\n')
    model = build_model(recipes.load(recipe_file).model)
    assert torch.equal(model.encoder.body.layer4[1].conv2.weight, published["layer4.1.conv2.weight"])


def test_offline_without_a_cached_copy_is_one_line_naming_the_fetch_command(offline: Path, tmp_path: Path) -> None:
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text("[model.encoder]\npretrained = true\n[model.decoder]\nchannels = 32\n")
    result = run_dbtk("models", str(recipe_file), env=offline_env(offline))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if not line.startswith("•")]
    assert len(problems) == 1 and problems[0].startswith("error: "), result.stderr
    assert TAG in problems[0] and str(offline / "hub") in problems[0]
    assert f"'dbtk weights fetch {TAG}'" in problems[0]


def test_a_pickle_only_cache_is_refused_unopened(offline: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from dbtk.models.encoders import TimmEncoder

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    snapshot = hub_layout(offline, TAG, {"pytorch_model.bin": pickle.dumps({"conv1.weight": Evil()}, protocol=2)})
    with pytest.raises(DbtkError, match="a pickle that dbtk never loads") as info:
        TimmEncoder("resnet18", pretrained=True)
    assert info.value.hint == f"convert it to safetensors (read with torch's weights_only loader): dbtk weights import {snapshot / 'pytorch_model.bin'} --tag {TAG}"
    assert "pwned" not in capfd.readouterr().out


def test_tags_are_checked_against_the_architecture(offline: Path, published: dict, tmp_path: Path) -> None:
    from dbtk.models.encoders import TimmEncoder

    with pytest.raises(DbtkError, match=r"pretrained 'resnet50.a1_in1k' is for resnet50, but the encoder's arch is 'resnet18'"):
        TimmEncoder("resnet18", pretrained=str(tmp_path / "resnet50.a1_in1k"))
    with pytest.raises(DbtkError, match=r"no pretrained weights 'resnet18.a1_in1kk' \(did you mean 'resnet18.a1_in1k'\?\)"):
        TimmEncoder("resnet18", pretrained=str(tmp_path / "resnet18.a1_in1kk"))
    with pytest.raises(DbtkError, match="weights file not found"):  # a missing file stays a missing file
        TimmEncoder("resnet18", pretrained=str(tmp_path / "resnet18.safetensors"))
    # A copy that is not the tag's architecture is refused, not half-loaded.
    import timm

    hub_layout(offline, TAG, {"model.safetensors": safetensors_bytes(timm.create_model("resnet34").state_dict())})
    with pytest.raises(DbtkError, match=f"does not hold {TAG}'s weights: unexpected"):
        TimmEncoder("resnet18", pretrained=True)


def test_weights_command_lists_imports_and_fetches_offline(offline: Path, published: dict, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    env = offline_env(offline)
    empty = run_dbtk("weights", "list", env=env)
    assert empty.returncode == 0 and f"no weights in {offline / 'hub'}" in empty.stdout

    checkpoint = tmp_path / "r18.pth"  # a training script's checkpoint: converted to safetensors on import
    torch.save({"state_dict": published}, checkpoint)
    imported = run_dbtk("weights", "import", str(checkpoint), "--tag", TAG, env=env)
    assert imported.returncode == 0, imported.stderr
    listing = json.loads(run_dbtk("weights", "list", "--json", env=env).stdout)
    assert listing["offline"] is True and listing["cache"] == str(offline / "hub")
    assert [(m["name"], m["files"], m["loadable"]) for m in listing["models"]] == [(TAG, ["model.safetensors"], True)]

    from dbtk.models.encoders import TimmEncoder

    assert torch.equal(TimmEncoder("resnet18", pretrained=True).body.layer2[0].conv1.weight, published["layer2.0.conv1.weight"])

    cached = run_dbtk("weights", "fetch", "resnet18", env=env)  # the default tag, already cached: no network needed
    assert cached.returncode == 0 and f"{TAG} (timm/{TAG}) already cached" in cached.stdout
    missing = run_dbtk("weights", "fetch", "resnet18.tv_in1k", env=env)
    assert missing.returncode == 2 and "error: cannot fetch resnet18.tv_in1k: HF_HUB_OFFLINE is set" in missing.stderr

    import timm

    save_file(timm.create_model("resnet34").state_dict(), tmp_path / "r34.safetensors")
    wrong = run_dbtk("weights", "import", str(tmp_path / "r34.safetensors"), "--tag", "resnet18.tv_in1k", env=env)
    assert wrong.returncode == 2 and "does not hold resnet18.tv_in1k's weights" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not (offline / "hub" / "models--timm--resnet18.tv_in1k").exists()


def test_doctor_says_whether_the_recipe_weights_are_available_offline(offline: Path, published: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from dbtk.doctor import rules
    from dbtk.doctor.probe import pretrained_weights

    def findings(text: str) -> list[rules.Finding]:
        return rules.weights_findings(json.loads(json.dumps(pretrained_weights(recipes.loads(text)))))

    assert findings("[model.encoder]\npretrained = false\n") == []
    [missing] = findings("[model.encoder]\npretrained = true\n")
    assert missing.status == rules.FAIL and "HF_HUB_OFFLINE is set" in missing.detail and missing.fix.startswith(f"dbtk weights fetch {TAG}")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    [online] = findings("[model.encoder]\npretrained = true\n")
    assert online.status == rules.WARN and "not available offline" in online.detail
    hub_layout(offline, TAG, {"model.safetensors": safetensors_bytes(published)})
    [cached] = findings(f'[model.encoder]\npretrained = "{TAG}"\n')
    assert cached.status == rules.OK and cached.detail == f"{TAG} is cached in {offline / 'hub'}: available offline"
    [gone] = findings('[model.encoder]\npretrained = "/nowhere/r18.safetensors"\n')
    assert gone.status == rules.FAIL and gone.detail == "weights file not found: /nowhere/r18.safetensors"
    measured = {"device": "cpu", "batch_size": 2, "accumulate": 1, "precision": "fp32", "seconds_per_step": 0.5,
                "weights": {"source": "hub", "tag": TAG, "cache": "/c", "available": True, "pickled": None, "offline": True}}
    assert [f.check for f in rules.recipe_findings(measured)] == ["recipe", "recipe weights"]


def test_a_local_file_of_another_architecture_is_refused_like_an_import(tmp_path: Path) -> None:
    """resnet34's tensors include every name and shape of resnet18's: loading what matches would train a resnet18
    from a third of a resnet34 without a word. The local-file path checks as ``dbtk weights import`` does."""
    import timm
    from safetensors.torch import save_file

    from dbtk.models.encoders import TimmEncoder

    save_file(timm.create_model("resnet34").state_dict(), tmp_path / "r34.safetensors")
    with pytest.raises(DbtkError, match=r"r34.safetensors does not hold resnet18's weights: unexpected 96 \(e.g. layer1.2.bn1.bias\)"):
        TimmEncoder("resnet18", pretrained=str(tmp_path / "r34.safetensors"))
    wide = {k: (torch.zeros(7, *v.shape[1:]) if k == "conv1.weight" else v) for k, v in timm.create_model("resnet18").state_dict().items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in wide.items()}}, tmp_path / "wide.pth")
    with pytest.raises(DbtkError, match=r"wide.pth does not hold resnet18's weights: wrong shape 1 \(e.g. conv1.weight"):
        TimmEncoder("resnet18", pretrained=str(tmp_path / "wide.pth"))
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text('[model.encoder]\narch = "resnet18"\npretrained = "r34.safetensors"\n[model.decoder]\nchannels = 32\n')
    result = run_dbtk("recipe", "check", str(recipe_file))
    assert result.returncode == 2 and "does not hold resnet18's weights" in result.stderr and "Traceback" not in result.stderr


def test_an_empty_pretrained_string_is_refused_not_read_as_false(tmp_path: Path) -> None:
    """``--set model.encoder.pretrained=$W`` with W unset gives "": training from random weights would hide it."""
    from dbtk.models.encoders import TimmEncoder

    message = 'pretrained = "": give true, false, a timm tag or a weights file'
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text('[model.encoder]\npretrained = ""\n')
    with pytest.raises(DbtkError, match=message):
        recipes.load(recipe_file)
    recipe_file.write_text("[model.encoder]\npretrained = false\n")
    with pytest.raises(DbtkError, match=message):
        recipes.load(recipe_file, ["model.encoder.pretrained="])
    with pytest.raises(DbtkError, match=message):
        TimmEncoder("resnet18", pretrained="")
