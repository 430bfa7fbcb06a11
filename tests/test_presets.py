"""Presets are plain -S overrides of keys that exist in params.yaml (DVC refuses others)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from triage.presets import override, overrides

PRESETS = sorted(p.stem for p in (REPO / "configs" / "presets").glob("*.yaml"))


def has_key(params: dict, dotted: str) -> bool:
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_guide_presets_exist() -> None:
    assert {"light", "balanced", "recommended", "large-rank", "a800-qwen2-7b"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_keys_exist_in_params(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    params = yaml.safe_load(Path("params.yaml").read_text())
    preset = yaml.safe_load((Path("configs/presets") / f"{name}.yaml").read_text())
    missing = [k for k in preset if not has_key(params, k)]
    assert not missing, f"{name}: not in params.yaml, `dvc exp run -S` would refuse: {missing}"
    assert len(overrides(name)) == len(preset)


def test_override_quoting() -> None:
    assert override("lora_target", "q_proj,v_proj") == "lora_target='q_proj,v_proj'"
    assert override("max_samples", None) == "max_samples=null"
    assert override("bf16", True) == "bf16=true"
    assert override("learning_rate", 2e-4) == "learning_rate=0.0002"
