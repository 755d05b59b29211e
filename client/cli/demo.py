"""`kvmplat demo`: an embedded agent on a temporary socket, a `probe` guest on 2 vCPUs run to its end, then a `loop`
guest taken through start, pause, resume, stop and destroy, with every event printed as it arrives.

The agent is `kvmplat-agent` from the same environment as this Python. Everything is cleaned up (VMs destroyed, agent
sent SIGTERM, temporary directory removed) however the demo ends, Ctrl-C included. `--linux` hands the running agent
to `kvmplat.client.cli.linux_demo.run(client)` instead, when that module is installed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kvmplat.client.agent import Client, EventStream
from kvmplat.client.cli import output
from kvmplat.client.cli.main import EXIT_OK, Commands, Context, UsageError
from kvmplat.client.errors import KvmplatError
from kvmplat.client.vmstates import ENDED, state_name
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["LINUX_DEMO_MODULE", "StateBoard", "agent_command", "embedded_agent", "register", "run_demo"]

LINUX_DEMO_MODULE = "kvmplat.client.cli.linux_demo"
_AGENT_START_S = 15.0
_PROBE_END_S = 120.0  # every guest instruction is emulated on kvm_pvm hosts; the probe still ends in seconds
_STATE_S = 30.0
_TICKS_S = 3.0


def register(commands: Commands) -> None:
    """Adds `demo`."""
    p = commands.add("demo", _demo, "start an embedded agent and walk guests through their lifecycle")
    p.add_argument("--linux", action="store_true", help=f"boot a Linux guest instead ({LINUX_DEMO_MODULE})")


def agent_command(sock: Path, state_dir: Path) -> list[str]:
    """The command line of the embedded agent: kvmplat-agent beside this interpreter."""
    exe = Path(sys.executable).parent / "kvmplat-agent"
    return [str(exe), "--listen", f"unix://{sock}", "--state-dir", str(state_dir)]


@contextlib.contextmanager
def embedded_agent(say: Callable[[str], None]) -> Iterator[Client]:
    """A private agent in a temporary directory, answering; stopped and removed on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="kvmplat-demo-"))
    sock = tmp / "agent.sock"
    cmd = agent_command(sock, tmp / "state")
    if not Path(cmd[0]).exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise UsageError(f"{cmd[0]} is missing: install kvmplat in this environment (make demo does)")
    log = (tmp / "agent.log").open("wb")
    say(f"starting {' '.join(cmd)}")
    agent = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    client: Client | None = None
    try:
        client = _wait_answering(sock, agent, tmp / "agent.log")
        yield client
    finally:
        if client is not None:
            client.close()
        _stop(agent)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_answering(sock: Path, agent: subprocess.Popen[bytes], log: Path) -> Client:
    """A Client once the agent answers GetCapabilities; UsageError with its log's tail if it dies or stays silent.
    The channel is made only after the socket exists, so gRPC's reconnect backoff never delays the demo."""
    deadline = time.monotonic() + _AGENT_START_S
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise UsageError(f"the embedded agent exited ({agent.returncode}): {_tail(log)}")
        if sock.exists():
            client = Client(f"unix://{sock}", timeout=10.0)
            try:
                client.capabilities()
                return client
            except KvmplatError:
                client.close()
        time.sleep(0.05)
    raise UsageError(f"the embedded agent did not answer within {_AGENT_START_S:.0f} s: {_tail(log)}")


def _tail(log: Path) -> str:
    """The last lines of the agent's log, on one line."""
    lines = log.read_text(errors="replace").strip().splitlines()[-3:]
    return " | ".join(lines) or "(no output)"


def _stop(agent: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it lingers."""
    if agent.poll() is None:
        agent.terminate()
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


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
    linux = None
    if ctx.args.linux:
        if importlib.util.find_spec(LINUX_DEMO_MODULE) is None:
            raise UsageError(f"demo --linux needs {LINUX_DEMO_MODULE}, which is not installed")
        linux = importlib.import_module(LINUX_DEMO_MODULE)
    with embedded_agent(ctx.print) as client:
        if linux is not None:
            code = linux.run(client)
            return EXIT_OK if code is None else int(code)
        try:
            run_demo(client, ctx.print)
        except TimeoutError as e:
            ctx.warn(str(e))
            return 1
    ctx.print("demo done: agent stopped, temporary files removed")
    return EXIT_OK
