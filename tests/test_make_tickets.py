"""The embedded ticket set is reproducible from its generator, byte for byte."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def generate(tmp_path: Path, seed: int, n: int = 2400) -> bytes:
    out = tmp_path / f"tickets-{seed}-{n}.csv"
    cmd = [sys.executable, "data/make_tickets.py", "--seed", str(seed), "--n", str(n)]
    subprocess.run([*cmd, "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    return out.read_bytes()


def test_committed_tickets_are_the_generator_output(tmp_path: Path) -> None:
    committed = (REPO / "data" / "raw" / "tickets.csv").read_bytes()
    assert hashlib.sha256(generate(tmp_path, 42)).digest() == hashlib.sha256(committed).digest()


def test_another_seed_gives_other_tickets(tmp_path: Path) -> None:
    a, b = generate(tmp_path, 1, n=300), generate(tmp_path, 2, n=300)
    assert a != b
    assert a.splitlines()[0] == b.splitlines()[0] == b"id,subject,body,category,priority,summary"
