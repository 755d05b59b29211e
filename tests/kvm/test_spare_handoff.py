"""The spare handoff (agent/runner/template.py, agent/registry/spares.py) as an agent sees it, on real KVM: the
template passes each ready spare on its link (SpareReady and the agent's end of a socket pair, SCM_RIGHTS); a Spawn
there is answered there (Spawned, or the Failure that stopped the build) and the same socket is then the runner's
first agent connection (the hello sent behind the config is answered there); a spare whose socket the agent closes
ends, and a Spawn on stdin still forks a runner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from kvmplat.agent.registry.strays import runners_of, template_argv
from kvmplat.agent.runner import wire
from kvmplat.agent.runner.template import SPARES
from kvmplat.agent.runner.wire import BootSource, RunnerConfig

pytestmark = pytest.mark.kvm


class Template:
    """A runner template started as the agent starts it, with the agent's ends of its pipes and its link."""

    def __init__(self, state: Path) -> None:
        self.state = state
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.link = ours
        self.proc = subprocess.Popen(
            [sys.executable, *template_argv(str(state))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(theirs.fileno(),),
            env={**os.environ, wire.LINK_ENV: str(theirs.fileno())},
        )
        theirs.close()
        self.link.settimeout(30)

    def next_spare(self) -> tuple[wire.SpareReady, Conn]:
        data, fds, _, _ = socket.recv_fds(self.link, wire.MAX_LINE, 1)
        assert len(fds) == 1, "a SpareReady comes with exactly one fd"
        msg = wire.decode(data)
        assert isinstance(msg, wire.SpareReady)
        return msg, Conn(socket.socket(fileno=fds[0]))

    def config(self, name: str, **changes: object) -> RunnerConfig:
        (self.state / "run").mkdir(parents=True, exist_ok=True)
        base = RunnerConfig(
            name=name, vcpus=1, memory_mib=16, socket=str(self.state / "run" / f"{name}.sock"), boot=BootSource("loop")
        )
        return replace(base, **changes)  # type: ignore[arg-type]

    def close(self) -> None:
        """Ends the template, its spares (their links close) and any runner a failed test left."""
        self.link.close()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        for pid in runners_of(str(self.state)):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def template(tmp_path: Path) -> Iterator[Template]:
    t = Template(tmp_path)
    yield t
    t.close()


class Conn:
    """The agent's end of a socket to a spare or runner: whole messages each way (the runner's events skipped)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(30)
        self.sock, self.rfile = sock, sock.makefile("rb")

    def send(self, msg: object) -> None:
        self.sock.sendall(wire.encode(msg))

    def recv(self) -> object:
        while True:
            line = self.rfile.readline()
            assert line, "the other end closed the socket"
            msg = wire.decode(line)
            if not isinstance(msg, wire.RunnerEvent):
                return msg

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


def _destroy(conn: Conn) -> None:
    conn.send(wire.Call(99, "destroy"))
    reply = conn.recv()
    assert isinstance(reply, wire.Reply) and isinstance(reply.result, wire.StateReply)


def test_a_spare_answers_its_spawn_on_its_socket_which_then_serves_as_the_runners_connection(
    template: Template,
) -> None:
    ready, conn = template.next_spare()
    assert ready.hint is None  # forked before any VM was asked for: nothing built ahead
    config = template.config("h1")
    # as the agent does: the hello right behind the config, in one write; the runner answers it once it listens
    conn.sock.sendall(wire.encode(wire.Spawn(config)) + wire.encode(wire.Call(0, "hello")))
    spawned = conn.recv()
    assert spawned == wire.Spawned(ready.pid)
    assert Path(config.socket).exists()  # it listens, for a later agent
    hello = conn.recv()
    assert isinstance(hello, wire.Reply) and isinstance(hello.result, wire.Hello)
    assert hello.result.pid == ready.pid and hello.result.state == "CREATED"
    # the next spares are told the config it was given: they build its machine ahead
    following = [template.next_spare() for _ in range(SPARES)]  # the others forked with it, then its replacement
    assert [r.hint.shape() if r.hint else None for r, _ in following].count(config.shape()) >= 1
    _destroy(conn)
    assert _gone(ready.pid)
    for _, other in following:
        other.close()


def test_a_spare_reports_what_stopped_its_build_on_its_socket(template: Template) -> None:
    ready, conn = template.next_spare()
    conn.send(wire.Spawn(template.config("bad", boot=BootSource("no-such-builtin"))))
    failure = conn.recv()
    assert isinstance(failure, wire.Failure) and "no-such-builtin" in failure.message
    assert _gone(ready.pid)


def test_a_spare_whose_socket_the_agent_closes_ends(template: Template) -> None:
    ready, conn = template.next_spare()
    conn.close()
    assert _gone(ready.pid)
    replacement, other = template.next_spare()  # the template forks its replacement
    assert replacement.pid != ready.pid
    other.close()


def test_a_spawn_on_stdin_forks_a_runner_of_its_own(template: Template) -> None:
    spare, spare_conn = template.next_spare()
    config = template.config("f1")
    assert template.proc.stdin is not None and template.proc.stdout is not None
    template.proc.stdin.write(wire.encode(wire.Spawn(config, 7)))
    template.proc.stdin.flush()
    reply = wire.decode(template.proc.stdout.readline())
    assert isinstance(reply, wire.SpawnReply) and reply.id == 7 and isinstance(reply.answer, wire.Spawned)
    assert reply.answer.pid != spare.pid
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(config.socket)
    _destroy(Conn(sock))
    assert _gone(reply.answer.pid)
    spare_conn.close()
