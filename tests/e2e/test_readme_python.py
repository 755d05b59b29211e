"""The README's Python section runs as written against a real agent (issue 18: the example must really run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from agent_harness import AgentProc

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]

README = Path(__file__).resolve().parents[2] / "README.md"


def python_example() -> str:
    """The first ```python block of the README's "## Python" section."""
    section = README.read_text().split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "no python block in the README's Python section"
    return found.group(1)


def test_the_example_is_about_twenty_lines() -> None:
    assert 15 <= len(python_example().splitlines()) <= 30


def test_the_readme_python_example_runs(agent: AgentProc) -> None:
    env = {**os.environ, "KVMPLAT_AGENT": agent.address}
    done = subprocess.run(
        [sys.executable, "-c", python_example()], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("accel: ") and lines[1] == "hello RUNNING"
    assert any(line.startswith("console: kvmplat-probe") for line in lines), lines
    assert lines[-1].startswith("state: STOPPED"), lines
    assert agent.list_vms().vms == []
