"""`kvmplat console NAME`: the VM's serial console on this terminal.

Console events of the VM stream to stdout (from a thread); bytes read from stdin go to the VM with WriteConsole.
On a tty, stdin is put in raw mode (so Ctrl-C and friends reach the guest) with output processing kept on, and
Ctrl-] detaches, as in telnet and virsh. The session ends too when the VM stops or crashes.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from typing import TextIO

from kvmplat.client.agent import Client, EventStream
from kvmplat.client.cli.main import EXIT_OK, Commands, Context, UsageError
from kvmplat.client.errors import FailedPrecondition
from kvmplat.client.vmstates import ENDED, state_name

__all__ = ["DETACH", "attach", "register"]

DETACH = b"\x1d"  # Ctrl-]
_POLL_S = 0.1  # how often the input loop notices that the VM ended


def register(commands: Commands) -> None:
    """Adds `console NAME`."""
    p = commands.add("console", _console, "attach to a VM's serial console (Ctrl-] detaches)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--since", metavar="SEQ", type=int, default=None, help="replay output after SEQ (default: new only)")


def _console(ctx: Context) -> int:
    try:
        stdin = sys.stdin.fileno()
    except (OSError, ValueError, AttributeError):
        raise UsageError("console needs a real stdin (a terminal, a pipe or a file)") from None
    if os.isatty(stdin):
        ctx.warn(f"console of {ctx.args.name}; Ctrl-] detaches")
    attach(ctx.client(), ctx.args.name, stdin, ctx.stdout, ctx.stderr, ctx.args.since)
    return EXIT_OK


def attach(client: Client, name: str, stdin_fd: int, out: TextIO, err: TextIO, since: int | None = None) -> None:
    """Runs one console session: VM output to `out`, `stdin_fd` bytes to the VM, until Ctrl-] or the VM ends."""
    vm = client.get_vm(name)
    if vm.state in ENDED and since is None:
        # Nothing would ever arrive: refuse as the agent refuses a transition, naming the state.
        raise FailedPrecondition(f"cannot attach to {name}: it is {state_name(vm.state)}", "FAILED_PRECONDITION")
    start = vm.last_seq if since is None else since
    stream = client.watch_events(name, since_seq=start, follow=True)
    ended = threading.Event()
    failures: list[BaseException] = []
    printer = threading.Thread(target=_print_output, args=(stream, out, err, ended, failures), daemon=True)
    printer.start()
    try:
        with _raw_mode(stdin_fd):
            _send_input(client, name, stdin_fd, ended)
    finally:
        stream.cancel()
        printer.join(timeout=2.0)
    if failures:
        raise failures[0]


def _print_output(
    stream: EventStream, out: TextIO, err: TextIO, ended: threading.Event, failures: list[BaseException]
) -> None:
    """Copies console text to `out` until the VM ends or the stream is cancelled (runs in a thread)."""
    try:
        for event in stream:
            kind = event.WhichOneof("kind")
            if kind == "console":
                out.write(event.console.text)
                out.flush()
            elif kind == "error":
                err.write(f"kvmplat: {event.vm}: {event.error.message}\n")
            elif kind == "state" and event.state.to in ENDED:
                reason = f" ({event.state.reason})" if event.state.reason else ""
                err.write(f"kvmplat: {event.vm} is {state_name(event.state.to)}{reason}\n")
                break
    except BaseException as e:  # handed to the main thread, which re-raises it
        failures.append(e)
    finally:
        ended.set()


def _send_input(client: Client, name: str, fd: int, ended: threading.Event) -> None:
    """Sends what arrives on `fd` to the VM until Ctrl-], or until the VM ends (EOF just stops reading)."""
    while not ended.is_set():
        readable, _, _ = select.select([fd], [], [], _POLL_S)
        if not readable:
            continue
        data = os.read(fd, 4096)
        if not data:
            ended.wait()  # stdin is done, the guest may still talk: keep showing it until it ends or Ctrl-C
            return
        data, detach, _ = data.partition(DETACH)
        if data:
            client.write_console(name, data)
        if detach:
            return


@contextlib.contextmanager
def _raw_mode(fd: int) -> Iterator[None]:
    """Raw input on a tty (keys go to the guest), with output processing kept so newlines still return."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        mode = termios.tcgetattr(fd)
        mode[1] |= termios.OPOST  # oflag: keep "\n" -> "\r\n" for the guest's and our own lines
        termios.tcsetattr(fd, termios.TCSANOW, mode)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
