"""Shared, expensive fixtures: built once per test session.

- `tiny_model`: a random Llama with the real SmolLM2 tokenizer and chat template, small
  enough to train and serve in seconds (head_dim 64: vLLM's CPU attention rejects 16).
- `make_workspace`: a temporary git + DVC copy of this repository, where tests run
  `dvc repro` / `dvc exp run` exactly as a user would, without touching the real workspace.
- `base_workspace`: such a copy with the embedded default converted (the real 135M model).
- `tiny_workspace`: such a copy on the tiny model, run through merge; `tiny_experiments`: two
  experiments on it (lora_rank, lora_target), shared by the train and report tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from bench.common import copy_project
from tests.helpers import REPO, set_dotted

# Stage commands call plain `python`: make it this environment's, and find the serving
# environment by absolute path, as the Makefile does.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
os.environ.setdefault("TICKET_SERVE_PYTHON", str(REPO / ".venv-serve" / "bin" / "python"))
# Tests never reach a model hub: fail fast instead of waiting for a network time-out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, capturing output; on failure show it (pytest prints it)."""
    env = {**os.environ, "PYTHONPATH": str(cwd), **kw.pop("env", {})}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM saved as a Hugging Face folder (about 2 s to build)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from stages.base_model import find_gguf

    params = yaml.safe_load((REPO / "params.yaml").read_text())["base_model"]
    gguf = find_gguf(params["source"], params["gguf_package"])
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"  # as the base_model stage does
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(out)  # float32, like the embedded default: fast on any CPU
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def make_workspace(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: a fresh git repository holding this project's files (committed or not).

    `make_workspace(name, params={"a.b": 1})` copies what `git ls-files` shows (tracked and
    untracked-but-not-ignored files), applies dotted params overrides, and commits, so that
    `dvc exp run` has a clean baseline commit.
    """

    def make(name: str, params: dict[str, object] | None = None) -> Path:
        dest = tmp_path_factory.mktemp(name)
        copy_project(dest)
        if params:
            set_params(dest / "params.yaml", params)
        run(["git", "init", "-q", "-b", "main"], dest)
        run(["git", "add", "-A"], dest)
        run(
            [
                "git",
                "-c",
                "user.name=test",
                "-c",
                "user.email=test@example.com",
                "commit",
                "-q",
                "-m",
                "workspace",
            ],
            dest,
        )
        return dest

    return make


def set_params(path: Path, overrides: dict[str, object]) -> None:
    """Apply dotted-key overrides (`prepare.max_tickets`) to a params.yaml file."""
    params = set_dotted(yaml.safe_load(path.read_text()), overrides)
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))


def dvc(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    """Run DVC from the pipeline environment, as `make repro` does."""
    return run([sys.executable, "-m", "dvc", *args], cwd, **kw)


@pytest.fixture(scope="session")
def base_workspace(make_workspace) -> Path:
    """One workspace where `dvc repro base_model` converted the embedded default (about 40 s):
    the real SmolLM2-135M-Instruct as a Hugging Face folder, for the tests that need a model
    that knows language."""
    ws = make_workspace("base-model")
    dvc(["repro", "base_model"], ws)
    return ws


# Small enough that the whole pipeline runs in a couple of minutes on 2 CPU cores.
TINY_PARAMS: dict[str, object] = {
    "max_samples": 40,
    "cutoff_len": 512,
    "lora_rank": 8,
    "eval_steps": 5,
    "save_steps": 5,
    "logging_steps": 1,
    "val_size": 0.1,
    "prepare.test_size": 0.1,
    "prepare.max_tickets": 200,
    "serve.startup_timeout_s": 1800,  # only a hang reaches it, not a busy machine
}


@pytest.fixture(scope="session")
def tiny_workspace(make_workspace, tiny_model: Path) -> Path:
    """A workspace whose params point at the tiny model, with the pipeline run through merge.

    Shared by the train, merge and evaluate tests: they may add stages (`dvc repro`) or
    run experiments with `dvc exp run --temp`, which leaves this workspace as it is.
    """
    ws = make_workspace("tiny", {**TINY_PARAMS, "base_model.source": str(tiny_model)})
    dvc(["repro", "merge"], ws)
    return ws


class Experiment(NamedTuple):
    """A finished `dvc exp run`: its name, commit and the stages that ran."""

    name: str
    rev: str
    ran: set[str]


def exp_run(
    ws: Path, *overrides: str, name: str | None = None, target: str = "merge"
) -> Experiment:
    """`dvc exp run --temp` up to `target` (merge: no evaluation), with `-S` overrides."""
    args = ["exp", "run", "--temp", *(["-n", name] if name else [])]
    args += [*[a for o in overrides for a in ("-S", o)], target]
    out = dvc(args, ws).stdout
    ran = set(re.findall(r"Running stage '(\w+)'", out))
    name = re.search(r"Ran experiment\(s\): (\S+)", out).group(1)
    refs = run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], ws)
    (rev,) = [r.split()[0] for r in refs.stdout.splitlines() if r.endswith(f"/{name}")]
    return Experiment(name, rev, ran)


# Experiments on the tiny workspace: each trains for minutes on a CPU, so they run once per
# session and the train tests (what reran, what the adapter holds) and the report tests
# (`dvc exp show`, the comparison report) look at the same two runs.
TINY_EXPERIMENTS: dict[str, tuple[str, ...]] = {
    "rank-16": ("lora_rank=16",),
    "target-qv": ("lora_target='q_proj,v_proj'",),
}


@pytest.fixture(scope="session")
def tiny_experiments(tiny_workspace: Path) -> dict[str, Experiment]:
    """The TINY_EXPERIMENTS run in `tiny_workspace` (`dvc exp run --temp -n NAME ... merge`)."""
    return {
        name: exp_run(tiny_workspace, *overrides, name=name)
        for name, overrides in TINY_EXPERIMENTS.items()
    }
