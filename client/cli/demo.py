"""`kvmplat demo`: an embedded agent on a temporary socket, a `probe` guest on 2 vCPUs run to its end, then a `loop`
guest taken through start, pause, resume, stop and destroy, with every event printed as it arrives.

The agent is `kvmplat-agent` from the same environment as this Python. Everything is cleaned up (VMs destroyed, agent
sent SIGTERM, temporary directory removed) however the demo ends, Ctrl-C included. `--linux` hands the running agent
to `kvmplat.client.cli.linux_demo.run(client)` instead.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kvmplat.client.agent import Client, EventStream
from kvmplat.client.cli import output
from kvmplat.client.cli.main import EXIT_OK, Commands, Context, UsageError
from kvmplat.client.errors import KvmplatError
from kvmplat.client.localagent import AGENT, AgentNotStarted, LocalAgent
from kvmplat.client.vmstates import ENDED, state_name
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["AGENT_PROGRAM", "StateBoard", "embedded_agent", "register", "run_demo"]

_AGENT_START_S = 15.0
AGENT_PROGRAM: tuple[str, ...] = (str(AGENT),)  # the agent's program (the tests run a stand-in)
_PROBE_END_S = 120.0  # every guest instruction is emulated on kvm_pvm hosts; the probe still ends in seconds
_STATE_S = 30.0
_TICKS_S = 3.0


def register(commands: Commands) -> None:
    """Adds `demo`."""
    p = commands.add("demo", _demo, "start an embedded agent and walk guests through their lifecycle")
    p.add_argument("--linux", action="store_true", help="boot a Linux guest instead (client/cli/linux_demo.py)")


@contextlib.contextmanager
def embedded_agent(say: Callable[[str], None]) -> Iterator[Client]:
    """A private agent in a temporary directory, answering; its VMs destroyed, it stopped and removed on exit."""
    if not Path(AGENT_PROGRAM[-1]).exists():
        raise UsageError(f"{AGENT_PROGRAM[-1]} is missing: install kvmplat in this environment (make demo does)")
    tmp = Path(tempfile.mkdtemp(prefix="kvmplat-demo-"))
    try:
        say(f"starting {' '.join(AGENT_PROGRAM)} --listen unix://{tmp}/agent.sock --state-dir {tmp}/state")
        try:
            agent = LocalAgent.start(tmp, program=AGENT_PROGRAM, timeout=_AGENT_START_S)
        except AgentNotStarted as e:
            raise UsageError(f"the embedded agent did not start: {e}") from None
        with agent:
            yield agent.client
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class StateBoard:
    """The latest state of each VM as seen on the event stream, for waiting on transitions."""

    def __init__(self) -> None:
        self._states: dict[str, int] = {}
        self._cond = threading.Condition()

    def record(self, event: pb.Event) -> None:
        """Notes a state change event."""
        if event.WhichOneof("kind") == "state":
            with self._cond:
                self._states[event.vm] = event.state.to
                self._cond.notify_all()

    def wait(self, vm: str, states: tuple[int, ...], timeout: float) -> int:
        """Waits until `vm` is in one of `states`; its state, or TimeoutError naming what it is."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._states.get(vm) in states, timeout):
                now = state_name(self._states.get(vm, 0))
                wanted = "/".join(state_name(s) for s in states)
                raise TimeoutError(f"{vm} did not reach {wanted} within {timeout:.0f} s (it is {now})")
            return self._states[vm]


def _follow(stream: EventStream, board: StateBoard, say: Callable[[str], None]) -> None:
    """Prints every event and records states (runs in a thread until the stream is cancelled)."""
    with contextlib.suppress(KvmplatError):  # the agent going away at the end is not news
        for event in stream:
            say(output.format_event(event))
            board.record(event)


def _spec(name: str, builtin: str, vcpus: int) -> pb.VmSpec:
    """A small built-in guest."""
    return pb.VmSpec(name=name, vcpus=vcpus, memory_mib=16, boot=pb.BootSpec(builtin=builtin))


def _probe(client: Client, board: StateBoard, say: Callable[[str], None]) -> None:
    """The probe guest on 2 vCPUs, run until it ends by itself."""
    say("== probe: one line per vCPU, then the guest powers off")
    vm = client.create_vm(_spec("probe", "probe", 2), start=True)
    platform = output.format_platform(vm.effective_platform).splitlines()
    say("effective platform:\n" + "\n".join("  " + line for line in platform))
    board.wait("probe", ENDED, _PROBE_END_S)
    client.destroy_vm("probe")


def _loop(client: Client, board: StateBoard, say: Callable[[str], None]) -> None:
    """The loop guest through start, pause, resume, stop and destroy."""
    say("== loop: a guest that ticks until told otherwise")
    client.create_vm(_spec("loop", "loop", 1))
    for verb, action, target, linger in (
        ("start", client.start_vm, pb.RUNNING, _TICKS_S),
        ("pause", client.pause_vm, pb.PAUSED, 1.0),
        ("resume", client.resume_vm, pb.RUNNING, 1.0),
        ("stop", client.stop_vm, pb.STOPPED, 0.0),
    ):
        say(f"-- {verb}")
        action("loop")
        board.wait("loop", (target,), _STATE_S)
        time.sleep(linger)
    client.destroy_vm("loop")


def run_demo(client: Client, say: Callable[[str], None]) -> None:
    """The built-in demo against a running agent (its VMs are destroyed however it ends)."""
    say(output.format_caps(client.capabilities()))
    board = StateBoard()
    stream = client.watch_events(follow=True)
    printer = threading.Thread(target=_follow, args=(stream, board, say), daemon=True)
    printer.start()
    try:
        _probe(client, board, say)
        _loop(client, board, say)
        time.sleep(0.2)  # let the last events print before the stream closes
    finally:
        stream.cancel()
        printer.join(timeout=2.0)
        client.destroy_all()  # no VM of the demo (its agent is the demo's own) outlives it


def _demo(ctx: Context) -> int:
    with embedded_agent(ctx.print) as client:
        if ctx.args.linux:
            from kvmplat.client.cli import linux_demo

            return linux_demo.run(client)
        try:
            run_demo(client, ctx.print)
        except TimeoutError as e:
            ctx.warn(str(e))
            return 1
    ctx.print("demo done: agent stopped, temporary files removed")
    return EXIT_OK
