"""`kvmplat console` and the demo's choreography, against the FAKE agent of fake_agent_server.py (a real in-process
gRPC server that answers like the agent but runs no guests; the real agent is driven by tests/e2e)."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_agent_server import FakeAgentServer
from kvmplat.client.agent import Client
from kvmplat.client.cli import demo
from kvmplat.client.cli.console import DETACH, attach
from kvmplat.client.errors import FailedPrecondition
from kvmplat.v1 import agent_pb2 as pb
from test_client_cli import run


def _until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _session(client: Client, name: str) -> tuple[threading.Thread, int, io.StringIO, io.StringIO]:
    """A console session on a pipe, running in a thread; (thread, write end, out, err)."""
    read_fd, write_fd = os.pipe()
    out, err = io.StringIO(), io.StringIO()
    thread = threading.Thread(target=attach, args=(client, name, read_fd, out, err, 0), daemon=True)
    thread.start()
    return thread, write_fd, out, err


def test_console_sends_input_shows_output_and_detaches(fake_agent: FakeAgentServer) -> None:
    with Client(fake_agent.address) as client:
        client.create_vm(pb.VmSpec(name="c1", vcpus=1, memory_mib=16), start=True)
        thread, write_fd, out, _ = _session(client, "c1")
        os.write(write_fd, b"hello")
        _until(lambda: "hello\n" in out.getvalue())
        assert fake_agent.agent.console_in == [b"hello"]
        os.write(write_fd, b"bye" + DETACH + b"never sent")
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert fake_agent.agent.console_in == [b"hello", b"bye"]
        os.close(write_fd)


def test_console_ends_when_the_vm_stops(fake_agent: FakeAgentServer) -> None:
    with Client(fake_agent.address) as client:
        client.create_vm(pb.VmSpec(name="c2", vcpus=1, memory_mib=16), start=True)
        thread, write_fd, _, err = _session(client, "c2")
        os.close(write_fd)  # EOF on input: the session keeps showing output until the VM ends, so the stop after
        client.stop_vm("c2")  # the EOF is still reported by it
        thread.join(timeout=5)
        assert not thread.is_alive() and "c2 is STOPPED" in err.getvalue()


def test_console_of_a_stopped_vm_is_refused(fake_agent: FakeAgentServer) -> None:
    with Client(fake_agent.address) as client:
        client.create_vm(pb.VmSpec(name="c3", vcpus=1, memory_mib=16))
        client.stop_vm("c3")
        with pytest.raises(FailedPrecondition, match="c3: it is STOPPED"):
            attach(client, "c3", 0, io.StringIO(), io.StringIO())


def test_console_of_an_unknown_vm_exits_1(fake_agent: FakeAgentServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(os.devnull) as null:
        monkeypatch.setattr("sys.stdin", null)
        code, _, err = run(["console", "ghost"], {"KVMPLAT_AGENT": fake_agent.address})
    assert code == 1 and "ghost" in err


def test_demo_walks_probe_and_loop_and_leaves_nothing(
    fake_agent: FakeAgentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "_TICKS_S", 0.1)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    lines: list[str] = []
    with Client(fake_agent.address) as client:
        demo.run_demo(client, lines.append)
    text = "\n".join(lines)
    assert text.count("kvmplat-probe") == 2
    for change in ("CREATED -> RUNNING", "RUNNING -> PAUSED", "PAUSED -> RUNNING", "RUNNING -> STOPPED"):
        assert f"loop state {change}" in text
    assert fake_agent.agent.vms == {}


def test_demo_command_starts_an_agent_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole `kvmplat demo` with the fake agent as the embedded agent process."""
    script = Path(__file__).with_name("fake_agent_server.py")
    monkeypatch.setattr(demo, "AGENT_PROGRAM", (sys.executable, str(script)))
    monkeypatch.setattr(demo, "_TICKS_S", 0.1)
    code, out, err = run(["demo"])
    assert code == 0, err
    assert out.count("kvmplat-probe") == 2 and "loop state PAUSED -> RUNNING" in out
    started = next(line for line in out.splitlines() if line.startswith("starting "))
    tmp = Path(started.split("--listen unix://")[1].split()[0]).parent
    assert not tmp.exists()


def test_embedded_agent_comes_from_this_environment() -> None:
    assert (str(Path(sys.executable).parent / "kvmplat-agent"),) == demo.AGENT_PROGRAM
