"""The agent's session CPU share (agent/api/cpushare.py): set only by a session leader, only where the kernel groups
CPU by session, and said plainly when it cannot be; on this host, a real agent started in a session of its own."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from kvmplat.agent.api.cpushare import DEFAULT_SESSION_NICE, claim_session_share
from kvmplat.client.localagent import LocalAgent

LEADER = """
import sys
from kvmplat.agent.api.cpushare import claim_session_share
print(claim_session_share(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
"""


def _as_leader(nice: int, autogroup: Path, enabled: Path) -> str:
    """What claim_session_share says in a process that leads its own session."""
    argv = [sys.executable, "-c", LEADER, str(nice), str(autogroup), str(enabled)]
    return subprocess.run(argv, capture_output=True, text=True, check=True, start_new_session=True).stdout.strip()


def test_a_session_leader_writes_its_nice_and_says_when_autogroup_is_off(tmp_path: Path) -> None:
    autogroup, enabled = tmp_path / "autogroup", tmp_path / "enabled"
    autogroup.write_text("/autogroup-1 nice 0\n")
    enabled.write_text("1\n")
    assert "set to -7" in _as_leader(-7, autogroup, enabled) and autogroup.read_text() == "-7"
    enabled.write_text("0\n")
    assert "takes effect once kernel.sched_autogroup_enabled is 1" in _as_leader(-3, autogroup, enabled)
    assert autogroup.read_text() == "-3"


def test_nothing_is_written_without_autogroup_or_for_nice_zero(tmp_path: Path) -> None:
    enabled = tmp_path / "enabled"
    enabled.write_text("1\n")
    assert "does not group CPU by session" in _as_leader(-15, tmp_path / "no" / "autogroup", enabled)
    autogroup = tmp_path / "autogroup"
    autogroup.write_text("untouched")
    assert "left as it is (--session-nice 0)" in _as_leader(0, autogroup, enabled)
    assert autogroup.read_text() == "untouched"


def test_an_agent_sharing_its_session_leaves_the_session_alone(tmp_path: Path) -> None:
    autogroup = tmp_path / "autogroup"
    autogroup.write_text("untouched")
    said = claim_session_share(-15, str(autogroup), str(tmp_path / "enabled"))  # pytest leads no session of its own
    assert "shares its session" in said and autogroup.read_text() == "untouched"


@pytest.mark.skipif(
    not Path("/proc/self/autogroup").exists(), reason="this kernel has no autogroup (CONFIG_SCHED_AUTOGROUP)"
)
def test_a_real_agent_in_a_session_of_its_own_takes_the_default_weight(tmp_path: Path) -> None:
    with LocalAgent.start(tmp_path, new_session=True) as local:
        deadline = time.monotonic() + 10
        while f"nice {DEFAULT_SESSION_NICE}" not in Path(f"/proc/{local.proc.pid}/autogroup").read_text():
            assert time.monotonic() < deadline, Path(f"/proc/{local.proc.pid}/autogroup").read_text()
            time.sleep(0.05)
    (tmp_path / "zero").mkdir()
    with LocalAgent.start(tmp_path / "zero", ["--session-nice", "0"], new_session=True) as local:
        assert Path(f"/proc/{local.proc.pid}/autogroup").read_text().split()[-1] == "0"
