"""Every shipped recipe uses declared keys only, with values its checkers accept."""
from pathlib import Path

import pytest
import yaml
from fastargs import get_current_config

from ffcv_cram.train.cli import declare

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "rn50_configs").glob("*.yaml")) + sorted((ROOT / "cifar_configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def entries():
    declare({})
    return get_current_config().entries


def test_every_recipe_is_shipped():
    names = {p.name for p in CONFIGS}
    assert {"rn50_cram_plus_multi_100_epochs.yaml", "rn50_cram_plus_nm_100_epochs.yaml",
            "rn50_sgd_100_epochs.yaml", "rn20_cram_plus_multi.yaml",
            "rn20_cram_plus_high_sparsity.yaml", "rn18_cram_plus_k95.yaml",
            "vgg16_cram_plus_k95.yaml", "rn20_sgd.yaml"} <= names
    for epochs in (16, 24, 32, 40, 56, 88):
        assert {f"rn50_{epochs}_epochs.yaml", f"rn50_cram_plus_{epochs}_epochs.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_keys_and_values(entries, path):
    content = yaml.safe_load(path.read_text())
    for section, keys in content.items():
        for key, value in keys.items():
            assert (section, key) in entries, f"{path.name}: unknown key {section}.{key}"
            entries[(section, key)].validate(value)
    if "cram" in content and content["training"]["optimizer"] == "cram":
        assert content["cram"]["plus_version"] == 1 and content["cram"]["sparse_grad"] == 1


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_states_its_global_batch_and_the_batch_its_lr_belongs_to(path):
    """The same run at any number of processes: no per-process batch, and the lr's batch stated,
    so a run at another global batch must say how the lr follows (--lr.scaling)."""
    content = yaml.safe_load(path.read_text())
    assert "batch_size" not in content["training"]
    assert content["lr"]["batch_size"] == content["training"]["global_batch_size"]
