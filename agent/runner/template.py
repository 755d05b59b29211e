"""The runner template: a process started fresh by the agent (never a fork of the gRPC process) that has imported
everything a runner needs, and forks one runner per VM on request.

Forked runners share the template's pages copy-on-write, so an idle VM costs little more than its guest memory,
and a VM starts in milliseconds. Each runner is forked once, into a process group of its own; the template reaps those
that end (SIGCHLD wakes its loop), and when the template goes (with its agent) the runners live on, re-adopted
through their sockets by the next agent.

Protocol on the template's stdin/stdout (wire.py lines): Spawn(config, id) -> SpawnReply(id, Spawned(pid)) once the
runner listens on config.socket, or SpawnReply(id, the Failure that stopped it). Spawns overlap: the template forks a
runner as soon as it is asked and answers each once that runner reports (or dies), in whatever order they finish,
so one VM's build never waits behind another's. The template exits when the agent closes its stdin.

A spawn takes the spare runner when it is ready: a runner forked ahead of need, which has done what does not depend
on its VM (process group, signals, fds) and waits on a pipe for its config, after saying so on its readiness pipe.
The fork and the new process's first wait for a CPU happen before CreateVm asks, not while it waits; the template
forks the next spare once the one it handed out has reported (a spawn that finds none ready forks its runner as
before). A spare shows as `kvmplat-spare` in `ps` and ends when the template does (its pipe closes).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
from collections.abc import Iterable
from typing import NamedTuple

from kvmplat.agent.errors import HostError, InvalidArgument
from kvmplat.agent.kvm import ramfile
from kvmplat.agent.linux import layout as linux_layout
from kvmplat.agent.registry.strays import RUNNER_COMM
from kvmplat.agent.runner import vmrunner
from kvmplat.agent.runner.vcpu import install_kick_handler
from kvmplat.agent.runner.wire import Failure, RunnerConfig, Spawn, Spawned, SpawnReply, decode, encode, failure_of

__all__ = ["SPARE_COMM", "Spare", "fork_runner", "fork_spare", "main", "ready_reply"]

SPARE_COMM = "kvmplat-spare"
SPARE_READY = b"~"  # a spare's word on its readiness pipe: set up, waiting for its config


class Spare(NamedTuple):
    """A runner forked before its VM is known: it reads its config from `config_w` and reports on `ready_r`."""

    pid: int
    config_w: int
    ready_r: int


def fork_runner(config: RunnerConfig, template_fds: Iterable[int] = ()) -> int:
    """Forks a runner for `config` into a process group of its own; returns the pipe on which it reports readiness.
    `template_fds` (the template's own: its selector, signal pipe, other runners' pipes) are closed in the runner."""
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        _forked(template_fds)
        _runner_main(config, w)
    os.close(w)
    return r


def fork_spare(template_fds: Iterable[int] = ()) -> Spare:
    """Forks a spare runner: it says SPARE_READY once set up, then waits for the Spawn line it will build (or EOF:
    it ends)."""
    config_r, config_w = os.pipe()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(config_w)
        os.close(r)
        _forked(template_fds)
        with open("/proc/self/comm", "w") as comm:
            comm.write(SPARE_COMM)
        os.write(w, SPARE_READY)
        config = _await_config(config_r)
        if config is None:
            os._exit(0)
        _runner_main(config, w)
    os.close(config_r)
    os.close(w)
    return Spare(pid, config_w, r)


def _forked(template_fds: Iterable[int]) -> None:
    """A new runner's first steps: default signals, none of the template's fds (nor its stdio), a process group of
    its own."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in template_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _quiet_stdio()
    # A process group of its own: a Ctrl-C meant for the agent's terminal does not reach the VM. The same session,
    # so where the kernel shares CPU between sessions (autogroup) the agent and its runners are one group, as under
    # systemd's cgroup: a session per runner gave each VM the CPU share of the whole agent, and under load every
    # RPC waited for the starved agent (p99 137 ms against 87-96 ms measured here). SIGHUP (its group orphaned by
    # the template's end while a stopped runner is in it) and the terminal's SIGTTOU/SIGTTIN cannot stop or end it.
    os.setpgid(0, 0)
    for sig in (signal.SIGHUP, signal.SIGTTOU, signal.SIGTTIN):
        signal.signal(sig, signal.SIG_IGN)


def _await_config(fd: int) -> RunnerConfig | None:
    """The config of the Spawn line the template hands a spare; None when the template closed the pipe first."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return None
        data += chunk
    os.close(fd)
    msg = decode(data)
    return msg.config if isinstance(msg, Spawn) else None


def _hand(spare: Spare, line: bytes) -> bool:
    """Gives a spare its Spawn line; False when it is gone (then its pipes are closed)."""
    try:
        view = memoryview(line + b"\n")
        while view:
            view = view[os.write(spare.config_w, view) :]
    except OSError:
        os.close(spare.ready_r)
        return False
    finally:
        os.close(spare.config_w)
    return True


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


def _quiet_stdio() -> None:
    """The template's stdin and stdout are the agent's pipes: a runner holds /dev/null there instead."""
    sys.stdin.close()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


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


def _request(line: bytes) -> Spawn | Failure:
    """A request's Spawn, or the failure that refuses it."""
    try:
        msg = decode(line)
    except ValueError as e:
        return failure_of(InvalidArgument(f"bad request: {e}"))
    return msg if isinstance(msg, Spawn) else failure_of(InvalidArgument("unknown request"))


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
        self.spare: Spare | None = None
        self.spare_ready = False
        self.new_spare()

    def fds(self) -> list[int]:
        """The template's own fds, which a forked runner closes: selector, signal pipe, other runners' pipes."""
        pipes = [k.fd for k in self.sel.get_map().values() if isinstance(k.data, tuple)]
        spare = [] if self.spare is None else [self.spare.config_w, self.spare.ready_r]
        return [*self.own, *pipes, *spare]

    def new_spare(self, *also_close: int) -> None:
        """Forks the next spare; its readiness pipe is watched for SPARE_READY."""
        self.spare, self.spare_ready = fork_spare([*self.fds(), *also_close]), False
        self.sel.register(self.spare.ready_r, selectors.EVENT_READ, "spare")

    def on_spare(self) -> None:
        """The spare said it is ready, or died (then the next spawn forks its runner and a new spare)."""
        assert self.spare is not None
        word = os.read(self.spare.ready_r, 64)
        if word == SPARE_READY:
            self.spare_ready = True
            return
        self.sel.unregister(self.spare.ready_r)
        for fd in (self.spare.ready_r, self.spare.config_w):
            os.close(fd)
        self.spare = None

    def spawn(self, rid: int, line: bytes, config: RunnerConfig) -> None:
        """Starts the runner that builds `config` and watches its readiness pipe: the spare when it is ready, else a
        runner forked now."""
        spare = self.spare
        if spare is None or not self.spare_ready:
            ready = fork_runner(config, self.fds())
            if spare is None:
                self.new_spare(ready)
            self.sel.register(ready, selectors.EVENT_READ, (rid, bytearray(), None))
            return
        self.sel.unregister(spare.ready_r)
        self.spare = None
        if not _hand(spare, line):
            self.new_spare()
            self.spawn(rid, line, config)
            return
        # the next spare is forked once this one has reported (on_ready_pipe): not now, while it needs the CPU.
        # A spare killed as it was handed its config dies without a word: then a runner is forked for it after all
        self.sel.register(spare.ready_r, selectors.EVENT_READ, (rid, bytearray(), config))

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
            msg = _request(line)
            if isinstance(msg, Failure):
                self.reply(0, msg)
            else:
                self.spawn(msg.id, line, msg.config)

    def on_ready_pipe(self, fd: int, rid: int, got: bytearray, again: RunnerConfig | None) -> None:
        chunk = os.read(fd, 1 << 16)
        if chunk:
            got += chunk
            return
        self.sel.unregister(fd)
        os.close(fd)
        if not got and again is not None:
            self.sel.register(fork_runner(again, self.fds()), selectors.EVENT_READ, (rid, bytearray(), None))
            return
        self.reply(rid, ready_reply(bytes(got)))
        if self.spare is None:
            self.new_spare()

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
                elif key.data == "spare":
                    self.on_spare()
                else:
                    self.on_ready_pipe(int(key.fd), *key.data)


def main() -> None:
    """Serves spawn requests on stdin/stdout until stdin closes."""
    linux_layout.page_tables()  # cached here, so a Linux guest's runner inherits the loader imported and warm
    ramfile.prepare()  # one huge-page tmpfs for every runner's guest RAM, not one made per VM
    _Server().run()


if __name__ == "__main__":
    main()
