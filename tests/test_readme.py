"""Every ```python block of README.md runs as pasted: each in a fresh interpreter of its own,
in a scratch directory, in the order the README gives them, within a time limit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block, in order."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_the_readme_has_python_blocks():
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("line, code", [pytest.param(n, c, id=f"line{n}") for n, c in python_blocks()])
def test_readme_block_runs_as_pasted(line, code, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cp = subprocess.run([sys.executable, "-X", "dev", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 0, f"README.md block at line {line} failed:\n{cp.stderr[-4000:]}"
    assert "Traceback" not in cp.stderr, cp.stderr
    for warning in ("ResourceWarning", "leaked shared_memory"):  # an unclosed file, a ring left behind
        assert warning not in cp.stderr, f"README.md block at line {line}:\n{cp.stderr}"
