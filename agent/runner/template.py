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

The template keeps spare runners (SPARES) for the agent: runners forked ahead of need, which have done what does not
depend on their VM (process group, signals, fds) and built the machine of the last VM started (runner/prebuilt.py:
most VMs of a host share a shape; a VM of that shape takes it, another frees it). A spare says so on its readiness
pipe; the template then passes the agent its end of a socket pair to the spare (SpareReady, SCM_RIGHTS on the link
socket, LINK_ENV). The agent hands a spare its Spawn there, with its hello right behind it, and the spare answers
there (Spawned or Failure, then the hello's answer); that socket is then the agent's first connection to the runner:
CreateVm costs the agent one round trip to one process, not a relay through the template, a connect and a hello.
The fork, the build and the new process's first wait for a CPU happen before CreateVm asks. A spare passed on writes
the Spawn line it was given on its readiness pipe as it gets it (the template takes its config as the next spares'
hint), and closes the pipe once it listens as a runner; the template then forks the next spare. Spawn on stdin (the
agent had no spare) forks a runner as before. A spare shows as `kvmplat-spare` in `ps` and ends when its link closes
(the agent dropped it or is gone) or the template ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import signal
import socket
import sys
from collections.abc import Iterable
from typing import BinaryIO, NamedTuple

from kvmplat.agent.errors import HostError, InvalidArgument
from kvmplat.agent.kvm import ramfile
from kvmplat.agent.linux import layout as linux_layout
from kvmplat.agent.registry.strays import RUNNER_COMM, SPARE_COMM
from kvmplat.agent.runner import vmrunner
from kvmplat.agent.runner.machine import Machine
from kvmplat.agent.runner.prebuilt import Prebuilt
from kvmplat.agent.runner.vcpu import install_kick_handler
from kvmplat.agent.runner.wire import (
    LINK_ENV,
    MAX_LINE,
    Failure,
    RunnerConfig,
    SpareReady,
    Spawn,
    Spawned,
    SpawnReply,
    decode,
    encode,
    failure_of,
)

__all__ = ["SPARES", "SPARE_COMM", "Spare", "fork_runner", "fork_spare", "main", "ready_reply"]

SPARE_READY = b"~"  # a spare's word on its readiness pipe: set up, waiting for its config
SPARES = 3  # under bench/load.py, a third of CreateVms waited for the next spare with two, one in eight with three


class Spare(NamedTuple):
    """A runner forked before its VM is known: it reads its Spawn from `link`'s other end and reports on `ready_r`."""

    pid: int
    link: socket.socket  # the agent's end of the spare's socket pair: the template holds it until the spare is ready
    ready_r: int
    hint: RunnerConfig | None  # the config whose machine it builds ahead (runner/prebuilt.py), None: none


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
    the Spawn line it will build on its end of a socket pair (whose other end goes to the agent), and ends when that
    closes or the template ends first."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ours.close()
        os.close(r)
        _forked(template_fds)
        ahead = Prebuilt.build(hint)
        with open("/proc/self/comm", "w") as comm:
            comm.write(SPARE_COMM)
        os.write(w, SPARE_READY)
        got = _await_config(theirs, w)
        if got is None:
            os._exit(0)
        config, line, rfile = got
        with contextlib.suppress(OSError):  # its line, as it came, tells the template the next spares' hint
            os.write(w, line)
        _runner_main(config, w, None if ahead is None else ahead.take(config), (theirs, rfile))
    theirs.close()
    os.close(w)
    return Spare(pid, ours, r, hint)


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


def _await_config(link: socket.socket, ready_w: int) -> tuple[RunnerConfig, bytes, BinaryIO] | None:
    """The config of the Spawn line the agent sends a spare, the line, and the reader that read it (the agent's hello
    follows the line at once: the runner answers it from there); None when the agent closed the link first, or the
    template ended (its end of the readiness pipe closed)."""
    poller = select.poll()
    poller.register(link, select.POLLIN)
    poller.register(ready_w, 0)  # POLLERR once the template's end is closed
    if link.fileno() not in dict(poller.poll()):
        return None
    rfile = link.makefile("rb")
    line = rfile.readline(MAX_LINE)
    if not line.endswith(b"\n"):
        return None
    msg = decode(line)
    return (msg.config, line, rfile) if isinstance(msg, Spawn) else None


def ready_reply(data: bytes) -> Spawned | Failure:
    """The answer to a spawn from what its runner wrote on the readiness pipe before closing it."""
    if not data:
        return failure_of(HostError("the runner died while starting"))
    try:
        reply = decode(data)
    except ValueError as e:
        return failure_of(HostError(f"the runner's report: {e}"))
    return reply if isinstance(reply, Spawned | Failure) else failure_of(HostError("the runner said nonsense"))


def _runner_main(
    config: RunnerConfig,
    ready_fd: int,
    machine: Machine | None = None,
    link: tuple[socket.socket, BinaryIO] | None = None,
) -> None:
    """The runner process: build the VM (or take `machine`, built ahead), listen, report readiness (on `link` for a
    spare, whose agent waits there, else on the readiness pipe), close the readiness pipe (the template forks the
    next spare once a spare's closes), serve until destroyed."""
    code = 0
    try:
        with open("/proc/self/comm", "w") as comm:  # first: the threads its build starts take the name
            comm.write(RUNNER_COMM)  # how `ps` and a later agent (registry/strays.py) tell a runner from its template
        runner, listener = _start(config, machine)
        if link is None:
            os.write(ready_fd, encode(Spawned(os.getpid())))
        else:  # its agent may be gone: a runner recorded as it was handed its config serves on
            with contextlib.suppress(OSError):
                link[0].sendall(encode(Spawned(os.getpid())))
        os.close(ready_fd)
        runner.serve(listener, link)
        runner.wait_destroyed()
        listener.close()  # its path is the agent's to remove: by now a new VM of the same name may listen there
    except BaseException as e:
        with contextlib.suppress(OSError):
            if link is None:
                os.write(ready_fd, encode(failure_of(e)))
            else:
                link[0].sendall(encode(failure_of(e)))
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
    """The template's loop: requests on stdin, the readiness pipes of runners and spares starting, replies on stdout,
    ready spares to the agent on `link`, and SIGCHLD (a runner ended: reap it, no polling)."""

    def __init__(self, link: socket.socket) -> None:
        self.link = link
        self.sel = selectors.DefaultSelector()
        self.sel.register(0, selectors.EVENT_READ, None)
        self.sigchld, wake = os.pipe()
        for fd in (self.sigchld, wake):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake)
        signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
        self.sel.register(self.sigchld, selectors.EVENT_READ, "sigchld")
        self.own = [self.sel.fileno(), self.sigchld, wake, link.fileno()]
        self.partial = b""
        self.open = True
        self.spares: dict[int, Spare] = {}  # by readiness pipe
        self.heard: dict[int, bytearray] = {}  # what spares passed to the agent said since (by readiness pipe)
        self.hint: RunnerConfig | None = None  # the last VM's config: a new spare builds its machine ahead

    def fds(self) -> list[int]:
        """The template's own fds, which a forked runner closes: selector, signal pipe, link, other runners' pipes
        and the agent's ends of spares not yet passed on."""
        pipes = [k.fd for k in self.sel.get_map().values() if isinstance(k.data, tuple)]
        spares = [fd for s in self.spares.values() for fd in (s.ready_r, s.link.fileno()) if fd >= 0]
        return [*self.own, *pipes, *spares]

    def top_up(self) -> None:
        """Forks spares until SPARES are kept; each one's readiness pipe is watched. Called once per turn of the
        loop, after all it heard: a spare's line naming the next hint comes before the end of the spares the agent
        then drops for it (registry/spares.py), but may be read in the same turn."""
        while len(self.spares) < SPARES:
            spare = fork_spare(self.fds(), self.hint)
            self.spares[spare.ready_r] = spare
            self.sel.register(spare.ready_r, selectors.EVENT_READ, "spare")

    def on_spare(self, fd: int) -> None:
        """A spare said it is ready (its link goes to the agent), or, passed on, it said the Spawn line it was given
        (the next spares' hint) and closed its pipe once it listened as a runner, or it died."""
        data = os.read(fd, 1 << 16)
        if fd not in self.heard and data == SPARE_READY:
            self.pass_on(fd)
        elif fd in self.heard and data:
            self.heard[fd] += data
            if data.endswith(b"\n"):
                self.learn(bytes(self.heard[fd]))
        else:
            self.forget(fd)

    def pass_on(self, fd: int) -> None:
        """Passes a ready spare's link to the agent (its socket, SCM_RIGHTS): the agent hands it a config there."""
        spare = self.spares[fd]
        with contextlib.suppress(OSError):  # the agent is gone: its stdin closing ends this loop
            socket.send_fds(self.link, [encode(SpareReady(spare.pid, spare.hint))], [spare.link.fileno()])
        spare.link.close()
        self.heard[fd] = bytearray()

    def learn(self, said: bytes) -> None:
        """The config a spare was given (the line it wrote as it got it) is the next spares' hint."""
        with contextlib.suppress(ValueError):
            msg = decode(said)
            if isinstance(msg, Spawn) and not msg.config.incoming:
                self.hint = msg.config

    def forget(self, fd: int) -> None:
        """Drops the spare whose readiness pipe is `fd` (it became a runner, or died)."""
        self.sel.unregister(fd)
        self.heard.pop(fd, None)
        spare = self.spares.pop(fd)
        os.close(spare.ready_r)
        spare.link.close()

    def fork(self, rid: int, config: RunnerConfig) -> None:
        """Forks a runner for spawn `rid` (the agent had no spare for it)."""
        if not config.incoming:
            self.hint = config
        ready = fork_runner(config, self.fds())
        self.sel.register(ready, selectors.EVENT_READ, (rid, bytearray()))

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
                self.fork(msg.id, msg.config)

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
            self.top_up()
            for key, _ in self.sel.select():
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
    link = socket.socket(fileno=int(os.environ.pop(LINK_ENV)))
    _Server(link).run()


if __name__ == "__main__":
    main()
