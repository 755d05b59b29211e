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

A spawn takes a spare runner when one is ready: a runner forked ahead of need (SPARES are kept), which has done what
does not depend on its VM (process group, signals, fds), has built the machine of the last VM the template started
(runner/prebuilt.py: most VMs of a host share a shape; a VM of that shape takes it, another frees it), and waits on a
pipe for its config, after saying so on its readiness pipe. The fork, the build and the new process's first wait for
a CPU happen before CreateVm asks, not while it waits; the template forks new spares once the one it handed out has
reported, and replaces the spares forked before any VM was asked for, which have nothing built. A spawn that finds
none ready takes the next that becomes ready, waiting at most SPARE_WAIT (a spare still starting has done the fork
and most of a build already), else forks its runner as before. A spare shows as `kvmplat-spare` in `ps` and ends
when the template does (its pipe closes).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

from kvmplat.agent.errors import HostError, InvalidArgument
from kvmplat.agent.kvm import ramfile
from kvmplat.agent.linux import layout as linux_layout
from kvmplat.agent.registry.strays import RUNNER_COMM
from kvmplat.agent.runner import vmrunner
from kvmplat.agent.runner.machine import Machine
from kvmplat.agent.runner.prebuilt import Prebuilt, shape
from kvmplat.agent.runner.vcpu import install_kick_handler
from kvmplat.agent.runner.wire import Failure, RunnerConfig, Spawn, Spawned, SpawnReply, decode, encode, failure_of

__all__ = ["SPARE_COMM", "Spare", "fork_runner", "fork_spare", "main", "ready_reply"]

SPARE_COMM = "kvmplat-spare"
SPARE_READY = b"~"  # a spare's word on its readiness pipe: set up, waiting for its config
SPARE_WAIT = 0.05  # seconds a spawn waits for a spare still starting before it forks a runner of its own
SPARES = 2  # spares kept: with one, CreateVms close together found it still starting half the time under load


class Spare(NamedTuple):
    """A runner forked before its VM is known: it reads its config from `config_w` and reports on `ready_r`."""

    pid: int
    config_w: int
    ready_r: int
    shape: RunnerConfig | None  # the shape of the machine it builds ahead (prebuilt.shape), None: none


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


def fork_spare(template_fds: Iterable[int] = (), hint: RunnerConfig | None = None) -> Spare:
    """Forks a spare runner: it builds the machine of `hint` (runner/prebuilt.py), says SPARE_READY, then waits for
    the Spawn line it will build (or EOF: it ends)."""
    config_r, config_w = os.pipe()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(config_w)
        os.close(r)
        _forked(template_fds)
        ahead = Prebuilt.build(hint)
        with open("/proc/self/comm", "w") as comm:
            comm.write(SPARE_COMM)
        os.write(w, SPARE_READY)
        config = _await_config(config_r)
        if config is None:
            os._exit(0)
        _runner_main(config, w, None if ahead is None else ahead.take(config))
    os.close(config_r)
    os.close(w)
    return Spare(pid, config_w, r, None if hint is None else shape(hint))


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


def _runner_main(config: RunnerConfig, ready_fd: int, machine: Machine | None = None) -> None:
    """The runner process: build the VM (or take `machine`, built ahead), listen, report readiness, serve until
    destroyed."""
    code = 0
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(RUNNER_COMM)  # how `ps` and a later agent (registry/strays.py) tell a runner from its template
        runner, listener = _start(config, machine)
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


def _start(config: RunnerConfig, machine: Machine | None = None) -> tuple[vmrunner.VmRunner, socket.socket]:
    install_kick_handler()
    path = config.socket
    if len(path.encode()) > 107:
        raise InvalidArgument.field("state_dir", f"runner socket path too long for a unix socket: {path}")
    runner = vmrunner.VmRunner(config, machine)
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
        self.spares: dict[int, Spare] = {}  # by readiness pipe, oldest first
        self.ready: set[int] = set()  # the readiness pipes of spares that said SPARE_READY
        self.hint: RunnerConfig | None = None  # the last VM's config: a new spare builds its machine ahead
        self.waiting: deque[tuple[float, int, bytes, RunnerConfig]] = deque()  # (deadline, spawn) for a spare
        self.top_up()

    def fds(self) -> list[int]:
        """The template's own fds, which a forked runner closes: selector, signal pipe, other runners' pipes."""
        pipes = [k.fd for k in self.sel.get_map().values() if isinstance(k.data, tuple)]
        spares = [fd for s in self.spares.values() for fd in (s.config_w, s.ready_r)]
        return [*self.own, *pipes, *spares]

    def top_up(self, *also_close: int) -> None:
        """Forks spares until SPARES are kept; each one's readiness pipe is watched for SPARE_READY."""
        while len(self.spares) < SPARES:
            spare = fork_spare([*self.fds(), *also_close], self.hint)
            self.spares[spare.ready_r] = spare
            self.sel.register(spare.ready_r, selectors.EVENT_READ, "spare")

    def on_spare(self, fd: int) -> None:
        """A spare said it is ready (the oldest waiting spawn takes it), or died (then it is forgotten, and a spawn
        that waited for it forks its own runner)."""
        if os.read(fd, 64) == SPARE_READY:
            self.ready.add(fd)
            if self.waiting:
                _, rid, line, config = self.waiting.popleft()
                self.spawn(rid, line, config)
            return
        self.forget(fd)
        while len(self.waiting) > self.starting():
            _, rid, _, config = self.waiting.pop()
            self.fork(rid, config)

    def starting(self) -> int:
        """How many spares are still starting."""
        return len(self.spares) - len(self.ready)

    def expire(self) -> float | None:
        """Forks their own runners for the spawns that waited SPARE_WAIT for a spare; the seconds until the next
        one's deadline (None: none waits)."""
        now = time.monotonic()
        while self.waiting and self.waiting[0][0] <= now:
            _, rid, _, config = self.waiting.popleft()
            self.fork(rid, config)
        return self.waiting[0][0] - now if self.waiting else None

    def retire_blank(self) -> None:
        """Ends the idle spares forked before any VM was asked for (they build nothing ahead): top_up replaces them."""
        for fd, spare in list(self.spares.items()):
            if spare.shape is None and self.hint is not None and fd in self.ready:
                self.forget(fd)  # closing its config pipe's end ends the spare

    def forget(self, fd: int) -> None:
        """Drops the spare whose readiness pipe is `fd` (dead, or to end: its pipes are closed)."""
        self.sel.unregister(fd)
        self.ready.discard(fd)
        spare = self.spares.pop(fd)
        for end in (spare.ready_r, spare.config_w):
            os.close(end)

    def spawn(self, rid: int, line: bytes, config: RunnerConfig) -> None:
        """Starts the runner that builds `config` and watches its readiness pipe: a ready spare (the oldest of
        those that built this shape ahead, else the oldest), else the next spare still starting (for at most
        SPARE_WAIT: it has done the fork and most of a build already), else a runner forked now."""
        if not config.incoming:
            self.hint = config
        idle = [fd for fd in self.spares if fd in self.ready]
        want = shape(config)
        fd = next((fd for fd in idle if self.spares[fd].shape == want), idle[0] if idle else None)
        if fd is None:
            if self.starting() > len(self.waiting):
                self.waiting.append((time.monotonic() + SPARE_WAIT, rid, line, config))
            else:
                self.fork(rid, config)
            return
        self.sel.unregister(fd)
        self.ready.discard(fd)
        spare = self.spares.pop(fd)
        if not _hand(spare, line):
            self.spawn(rid, line, config)
            return
        # new spares are forked once this one has reported (on_ready_pipe): not now, while it needs the CPU.
        # A spare killed as it was handed its config dies without a word: then a runner is forked for it after all
        self.sel.register(spare.ready_r, selectors.EVENT_READ, (rid, bytearray(), config))

    def fork(self, rid: int, config: RunnerConfig) -> None:
        """Forks a runner for spawn `rid` (no spare was there for it)."""
        ready = fork_runner(config, self.fds())
        if not self.spares:
            self.top_up(ready)
        self.sel.register(ready, selectors.EVENT_READ, (rid, bytearray(), None))

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
        self.retire_blank()
        self.top_up()

    def reap(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.sigchld, 512):
                pass
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass

    def run(self) -> None:
        while self.open:
            for key, _ in self.sel.select(self.expire()):
                if key.data is None:
                    self.on_stdin()
                elif key.data == "sigchld":
                    self.reap()
                elif key.data == "spare":
                    self.on_spare(int(key.fd))
                else:
                    self.on_ready_pipe(int(key.fd), *key.data)


def main() -> None:
    """Serves spawn requests on stdin/stdout until stdin closes."""
    linux_layout.page_tables()  # cached here, so a Linux guest's runner inherits the loader imported and warm
    ramfile.prepare()  # one huge-page tmpfs for every runner's guest RAM, not one made per VM
    _Server().run()


if __name__ == "__main__":
    main()
