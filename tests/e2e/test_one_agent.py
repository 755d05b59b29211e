"""Issue 18: one agent per state directory and per socket, and no traceback from the agent's start-up or the CLI:
each failure a real user met is driven through the real entry points (subprocesses of this venv)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from agent_harness import AGENT, AgentFactory, AgentProc
from kvmplat.agent.api.exclusive import LOCK_NAME

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]

KVMPLAT = str(Path(sys.executable).parent / "kvmplat")


def agent_run(*argv: str) -> subprocess.CompletedProcess[str]:
    """A second `kvmplat-agent` that must give up at once (it never gets to serve)."""
    return subprocess.run([AGENT, *argv], capture_output=True, text=True, timeout=60, check=False)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single line a refused start-up prints; no traceback."""
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return lines[0]


def test_a_second_agent_on_a_live_socket_exits_2_naming_the_first(agent: AgentProc, tmp_path: Path) -> None:
    """Before: the second agent started, and on exit deleted the first one's socket."""
    done = agent_run("--listen", agent.address, "--state-dir", str(tmp_path / "other"))
    line = one_line(done)
    assert done.returncode == 2 and f"pid {agent.proc.pid}" in line and "socket" in line, line
    assert agent.client.capabilities().arch  # the first agent still serves on its socket


def test_a_second_agent_on_a_state_dir_in_use_exits_2_naming_the_first(agent: AgentProc, tmp_path: Path) -> None:
    """Before: the second agent re-adopted the first one's VMs and paused one of them."""
    done = agent_run("--listen", f"unix://{tmp_path}/b.sock", "--state-dir", str(agent.state_dir))
    line = one_line(done)
    assert done.returncode == 2 and f"pid {agent.proc.pid}" in line and str(agent.state_dir) in line, line
    assert not (tmp_path / "b.sock").exists()
    assert (agent.state_dir / LOCK_NAME).read_text().strip() == str(agent.proc.pid)


def test_a_dead_agents_socket_and_lock_are_taken_over(agent_factory: AgentFactory) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kvmplat-e2e-"))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp / "agent.sock"))  # a socket file nobody listens on: what a killed agent leaves
    stale.close()
    (tmp / "state").mkdir()
    (tmp / "state" / LOCK_NAME).write_text("999999\n")  # a lock file whose owner is gone (no flock held)
    a = AgentProc(tmp)
    try:
        assert a.client.capabilities().arch
        assert (tmp / "state" / LOCK_NAME).read_text().strip() == str(a.proc.pid)
    finally:
        a.close()


def test_a_busy_metrics_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Before: `OSError: [Errno 98] Address already in use` with a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = agent_run(
            "--listen", f"unix://{tmp_path}/m.sock", "--state-dir", str(tmp_path / "m"),
            "--metrics-listen", f"127.0.0.1:{port}",
        )  # fmt: skip
    line = one_line(done)
    assert done.returncode == 2 and f"127.0.0.1:{port}" in line and "in use" in line, line
    assert not (tmp_path / "m.sock").exists()  # it gave up before serving
    # and the state directory is free again for the next agent (the lock went with the process)
    fd = os.open(tmp_path / "m" / LOCK_NAME, os.O_RDWR)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_a_busy_tcp_listen_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = agent_run("--listen", f"tcp://127.0.0.1:{port}", "--insecure", "--state-dir", str(tmp_path / "t"))
    assert "Traceback" not in done.stderr  # grpc core logs its own line first; ours is the last
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and f"127.0.0.1:{port}" in line and "in use" in line, line


def test_an_unwritable_state_dir_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = agent_run("--listen", f"unix://{tmp_path}/s.sock", "--state-dir", str(tmp_path / "file" / "state"))
    line = one_line(done)
    assert done.returncode == 2 and "file" in line, line


def test_labels_into_a_missing_directory_is_one_line_and_exit_2(agent: AgentProc, tmp_path: Path) -> None:
    """Before: FileNotFoundError with a traceback, exit 1 (the code for refusals)."""
    target = tmp_path / "no" / "such" / "kvmplat"
    env = {**os.environ, "KVMPLAT_AGENT": agent.address}
    done = subprocess.run(
        [KVMPLAT, "labels", "--nfd-file", str(target)], env=env, capture_output=True, text=True, timeout=60
    )
    line = one_line(done)
    assert done.returncode == 2 and str(target) in line and "No such file or directory" in line, line
