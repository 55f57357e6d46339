"""Registry behaviour with fake plugin distributions (a *.dist-info folder on sys.path, no pip)."""

from __future__ import annotations

import json
import sys

import pytest

from dbtk.errors import RegistryError
from dbtk.registry import API_VERSION, Registry, check_entry
from tests.conftest import run_dbtk

GOOD = """
    class Decoder:
        def __init__(self, in_channels, channels=256, dropout=0.0):
            self.in_channels, self.channels = in_channels, channels
"""
BROKEN = """
    raise RuntimeError("boom: missing CUDA extension")
"""


@pytest.fixture
def plugins(fake_dists):
    fake_dists("dbtk-good", {"dbtk.decoders": {"good": "good_plugin:Decoder"}}, {"good_plugin": GOOD})
    fake_dists("dbtk-broken", {"dbtk.decoders": {"broken": "broken_plugin:Decoder"}}, {"broken_plugin": BROKEN})
    fake_dists("clash-a", {"dbtk.heads": {"twin": "twin_a:Head"}}, {"twin_a": "class Head:\n    pass\n"})
    fake_dists("clash-b", {"dbtk.heads": {"twin": "twin_b:Head"}}, {"twin_b": "class Head:\n    pass\n"})
    return Registry()


def test_listing_reads_metadata_only(plugins: Registry) -> None:
    entries = {(e.kind, e.name): e for e in plugins.entries()}
    assert entries["decoder", "good"].dist == "dbtk-good"
    assert entries["decoder", "good"].dist_version == "0.1"
    assert entries["decoder", "broken"].value == "broken_plugin:Decoder"
    assert "good_plugin" not in sys.modules and "broken_plugin" not in sys.modules


def test_good_plugin_loads_once_and_builds(plugins: Registry) -> None:
    factory = plugins.load("decoder", "good")
    assert plugins.load("decoder", "good") is factory
    decoder = plugins.build("decoder", {"name": "good", "channels": 64}, in_channels=[8, 16])
    assert (decoder.in_channels, decoder.channels) == ([8, 16], 64)


def test_broken_plugin_names_plugin_distribution_and_cause(plugins: Registry) -> None:
    with pytest.raises(RegistryError) as info:
        plugins.load("decoder", "broken")
    assert str(info.value) == (
        "decoder 'broken' from distribution 'dbtk-broken 0.1' (broken_plugin:Decoder) failed to import: "
        "RuntimeError: boom: missing CUDA extension"
    )
    assert "dbtk plugins --check" in info.value.hint
    # the rest of the registry is unaffected
    assert plugins.load("decoder", "good").__name__ == "Decoder"
    assert {"good", "broken"} <= set(plugins.names("decoder"))


def test_clash_names_both_distributions_and_dist_prefix_resolves(plugins: Registry) -> None:
    with pytest.raises(RegistryError) as info:
        plugins.resolve("head", "twin")
    assert str(info.value) == (
        "head 'twin' is registered by two distributions: 'clash-a' (twin_a:Head) and 'clash-b' (twin_b:Head)"
    )
    assert info.value.hint == "name one of them in the recipe as 'clash-a:twin' or 'clash-b:twin'"
    assert plugins.resolve("head", "clash-b:twin").value == "twin_b:Head"
    assert plugins.load("head", "clash_a:twin").__module__ == "twin_a"


def test_misspelled_parameter_gets_suggestion(plugins: Registry) -> None:
    with pytest.raises(RegistryError) as info:
        plugins.build("decoder", {"name": "good", "chanels": 64}, in_channels=[8])
    assert str(info.value) == "unknown parameter 'chanels' for decoder 'good' (did you mean 'channels'?)"
    assert info.value.hint == "decoder 'good' accepts: channels, dropout"


def test_provided_parameter_cannot_come_from_recipe(plugins: Registry) -> None:
    with pytest.raises(RegistryError, match="parameter 'in_channels' of decoder 'good' is set by dbtk itself"):
        plugins.build("decoder", {"name": "good", "in_channels": [1]}, in_channels=[8])


def test_unknown_name_suggests_close_match(plugins: Registry) -> None:
    with pytest.raises(RegistryError) as info:
        plugins.resolve("decoder", "godo")
    assert str(info.value) == "unknown decoder 'godo' (did you mean 'good'?)"


def test_api_version_range_is_enforced(fake_dists) -> None:
    fake_dists(
        "dbtk-future",
        {"dbtk.losses": {"future": "future_plugin:Loss"}},
        {"future_plugin": f"DBTK_API_VERSIONS = ({API_VERSION + 1}, {API_VERSION + 2})\nclass Loss:\n    pass\n"},
    )
    with pytest.raises(RegistryError, match=r"supports dbtk plugin API 2\.\.3, this dbtk provides 1"):
        Registry().load("loss", "future")


def test_check_entry_times_out_and_captures_stdout(fake_dists) -> None:
    fake_dists(
        "dbtk-odd",
        {"dbtk.loggers": {"slow": "slow_plugin:Logger", "chatty": "chatty_plugin:Logger"}},
        {
            "slow_plugin": "import time\ntime.sleep(5)\nclass Logger:\n    pass\n",
            "chatty_plugin": "print('hello from a plugin')\nclass Logger:\n    pass\n",
        },
    )
    reg = Registry()
    slow = check_entry(reg, reg.resolve("logger", "slow"), timeout=0.2)
    assert not slow.ok and slow.detail == "timed out after 0.2 s while importing slow_plugin"
    chatty = check_entry(reg, reg.resolve("logger", "chatty"), timeout=5)
    assert chatty.ok and chatty.stdout == "hello from a plugin\n"


def test_plugins_cli_lists_and_checks(plugins: Registry) -> None:
    listing = run_dbtk("plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {(r["group"], r["name"]): r for r in json.loads(listing.stdout)}
    assert rows["decoder", "good"]["distribution"] == "dbtk-good"
    assert "status" not in rows["decoder", "good"]

    checked = run_dbtk("plugins", "--check", "--json")
    assert checked.returncode == 0, checked.stderr
    rows = {(r["group"], r["name"]): r for r in json.loads(checked.stdout)}
    assert rows["decoder", "good"]["status"] == "ok"
    assert rows["decoder", "broken"]["status"] == "broken"
    assert rows["decoder", "broken"]["detail"] == "RuntimeError: boom: missing CUDA extension"

    table = run_dbtk("plugins", "--check")
    assert table.returncode == 0
    assert "broken" in table.stdout and "dbtk-good 0.1" in table.stdout
