"""The runner template: a process started fresh by the agent (never a fork of the gRPC process) that has imported
everything a runner needs, and forks one runner per VM on request.

Forked runners share the template's pages copy-on-write, so an idle VM costs little more than its guest memory,
and a VM starts in milliseconds. Each runner is forked once, into a session of its own; the template reaps those
that end (SIGCHLD wakes its loop), and when the template goes (with its agent) the runners live on, re-adopted
through their sockets by the next agent.

Protocol on the template's stdin/stdout (wire.py lines): Spawn(config, id) -> SpawnReply(id, Spawned(pid)) once the
runner listens on config.socket, or SpawnReply(id, the Failure that stopped it). Spawns overlap: the template forks a
runner as soon as it is asked and answers each once that runner reports (or dies), in whatever order they finish,
so one VM's build never waits behind another's. The template exits when the agent closes its stdin.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
from collections.abc import Iterable

from kvmplat.agent.errors import HostError, InvalidArgument
from kvmplat.agent.linux import layout as linux_layout
from kvmplat.agent.registry.strays import RUNNER_COMM
from kvmplat.agent.runner import vmrunner
from kvmplat.agent.runner.vcpu import install_kick_handler
from kvmplat.agent.runner.wire import Failure, RunnerConfig, Spawn, Spawned, SpawnReply, decode, encode, failure_of

__all__ = ["fork_runner", "main", "ready_reply"]


def fork_runner(config: RunnerConfig, template_fds: Iterable[int] = ()) -> int:
    """Forks a runner for `config` into a session of its own; returns the pipe on which it reports readiness.
    `template_fds` (the template's own: its selector, signal pipe, other runners' readiness pipes) are closed in the
    runner."""
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in template_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        os.setsid()  # a Ctrl-C or SIGHUP meant for the agent's session does not reach the VM
        _runner_main(config, w)
    os.close(w)
    return r


def ready_reply(data: bytes) -> Spawned | Failure:
    """The answer to a spawn from what its runner wrote on the readiness pipe before closing it."""
    if not data:
        return failure_of(HostError("the runner died while starting"))
    try:
        reply = decode(data)
    except ValueError as e:
        return failure_of(HostError(f"the runner's report: {e}"))
    return reply if isinstance(reply, Spawned | Failure) else failure_of(HostError("the runner said nonsense"))


def _runner_main(config: RunnerConfig, ready_fd: int) -> None:
    """The runner process: build the VM, listen, report readiness, serve until destroyed."""
    code = 0
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(RUNNER_COMM)  # how `ps` and a later agent (registry/strays.py) tell a runner from its template
        sys.stdin.close()
        os.dup2(os.open(os.devnull, os.O_RDWR), 0)
        os.dup2(os.open(os.devnull, os.O_RDWR), 1)
        runner, listener = _start(config)
        os.write(ready_fd, encode(Spawned(os.getpid())))
        os.close(ready_fd)
        runner.serve(listener)
        runner.wait_destroyed()
        listener.close()  # its path is the agent's to remove: by now a new VM of the same name may listen there
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.write(ready_fd, encode(failure_of(e)))
        code = 1
    os._exit(code)


def _start(config: RunnerConfig) -> tuple[vmrunner.VmRunner, socket.socket]:
    install_kick_handler()
    path = config.socket
    if len(path.encode()) > 107:
        raise InvalidArgument.field("state_dir", f"runner socket path too long for a unix socket: {path}")
    runner = vmrunner.VmRunner(config)
    _unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(4)
    return runner, listener


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _request(line: bytes, template_fds: Iterable[int]) -> tuple[int, int | None, Failure | None]:
    """A request's id and, when it asks for a spawn, the readiness pipe of the runner forked for it; otherwise the
    failure that refuses it."""
    try:
        msg = decode(line)
    except ValueError as e:
        return 0, None, failure_of(InvalidArgument(f"bad request: {e}"))
    if not isinstance(msg, Spawn):
        return 0, None, failure_of(InvalidArgument("unknown request"))
    return msg.id, fork_runner(msg.config, template_fds), None


class _Server:
    """The template's loop: requests on stdin, the readiness pipes of runners starting, replies on stdout, and
    SIGCHLD (a runner ended: reap it, no polling)."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.sel.register(0, selectors.EVENT_READ, None)
        self.sigchld, wake = os.pipe()
        for fd in (self.sigchld, wake):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake)
        signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
        self.sel.register(self.sigchld, selectors.EVENT_READ, "sigchld")
        self.own = [self.sel.fileno(), self.sigchld, wake]
        self.partial = b""
        self.open = True

    def reply(self, rid: int, answer: Spawned | Failure) -> None:
        sys.stdout.buffer.write(encode(SpawnReply(rid, answer)))
        sys.stdout.buffer.flush()

    def on_stdin(self) -> None:
        data = os.read(0, 1 << 16)
        if not data:
            self.open = False  # the agent is gone: nobody reads the replies of spawns still starting
            return
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            pipes = [k.fd for k in self.sel.get_map().values() if isinstance(k.data, tuple)]
            rid, fd, refusal = _request(line, [*self.own, *pipes])
            if fd is not None:
                self.sel.register(fd, selectors.EVENT_READ, (rid, bytearray()))
            elif refusal is not None:
                self.reply(rid, refusal)

    def on_ready_pipe(self, fd: int, rid: int, got: bytearray) -> None:
        chunk = os.read(fd, 1 << 16)
        if chunk:
            got += chunk
            return
        self.sel.unregister(fd)
        os.close(fd)
        self.reply(rid, ready_reply(bytes(got)))

    def reap(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.sigchld, 512):
                pass
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass

    def run(self) -> None:
        while self.open:
            for key, _ in self.sel.select():
                if key.data is None:
                    self.on_stdin()
                elif key.data == "sigchld":
                    self.reap()
                else:
                    self.on_ready_pipe(int(key.fd), *key.data)


def main() -> None:
    """Serves spawn requests on stdin/stdout until stdin closes."""
    linux_layout.page_tables()  # cached here, so a Linux guest's runner inherits the loader imported and warm
    _Server().run()


if __name__ == "__main__":
    main()
