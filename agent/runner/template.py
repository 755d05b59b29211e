"""The runner template: a process started fresh by the agent (never a fork of the gRPC process) that has imported
everything a runner needs, and forks one runner per VM on request.

Forked runners share the template's pages copy-on-write, so an idle VM costs little more than its guest memory,
and a VM starts in milliseconds. Each runner double-forks into its own session: it is nobody's child, survives
the agent, and is re-adopted through its socket.

Protocol on the template's stdin/stdout (wire.py lines): Spawn(config) -> Spawned(pid) once the runner listens on
config.socket, or the Failure that stopped it. The template exits when the agent closes its stdin.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys

from kvmplat.agent.errors import HostError, InvalidArgument
from kvmplat.agent.linux import layout as linux_layout
from kvmplat.agent.runner import vmrunner
from kvmplat.agent.runner.vcpu import install_kick_handler
from kvmplat.agent.runner.wire import Failure, RunnerConfig, Spawn, Spawned, decode, encode, failure_of

__all__ = ["main", "spawn"]


def spawn(config: RunnerConfig) -> Spawned | Failure:
    """Forks a runner for `config`; returns its pid or the error that stopped it from starting."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # intermediate: leave the template's session, fork the runner, exit
        os.close(r)
        os.setsid()
        if os.fork() == 0:
            _runner_main(config, w)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    if not data:
        return failure_of(HostError("the runner died while starting"))
    reply = decode(data)
    return reply if isinstance(reply, Spawned | Failure) else failure_of(HostError("the runner said nonsense"))


def _runner_main(config: RunnerConfig, ready_fd: int) -> None:
    """The runner process: build the VM, listen, report readiness, serve until destroyed."""
    code = 0
    try:
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


def main() -> None:
    """Serves spawn requests on stdin/stdout until stdin closes."""
    linux_layout.page_tables()  # cached here, so a Linux guest's runner inherits the loader imported and warm
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        reply: Spawned | Failure
        try:
            msg = decode(line)
            reply = spawn(msg.config) if isinstance(msg, Spawn) else failure_of(InvalidArgument("unknown request"))
        except ValueError as e:
            reply = failure_of(InvalidArgument(f"bad request: {e}"))
        out.write(encode(reply))
        out.flush()


if __name__ == "__main__":
    main()
