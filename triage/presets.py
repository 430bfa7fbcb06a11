"""Run a preset of configs/presets/ as a DVC experiment: `make exp PRESET=light`.

A preset is a flat YAML mapping of params.yaml keys (dotted for nested ones) to values. It is
applied with one `-S key=value` per entry, so the run is recorded, compared and applied like
any other `dvc exp run` (nothing about it lives outside params.yaml and git).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

from triage.files import run_main
from triage.params import PipelineError

PRESETS = Path("configs/presets")


def override(key: str, value: object) -> str:
    """One Hydra override as `dvc exp run -S` takes it (a comma would otherwise mean a sweep)."""
    if isinstance(value, str) and ("," in value or " " in value):
        return f"{key}='{value}'"
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value}"


def overrides(name: str) -> list[str]:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise PipelineError(f"{path}: no such preset (known: {known})")
    preset = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return [override(k, v) for k, v in preset.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", help="file name in configs/presets/ without .yaml")
    parser.add_argument("--queue", action="store_true", help="queue instead of running now")
    args, extra = parser.parse_known_args()
    cmd = ["dvc", "exp", "run", "-n", f"preset-{args.preset}"]
    cmd += ["--queue"] if args.queue else []
    for item in overrides(args.preset):
        cmd += ["-S", item]
    print(" ".join(cmd), flush=True)
    sys.exit(subprocess.run([*cmd, *extra]).returncode)


if __name__ == "__main__":
    run_main(main)
