"""bench/chaos.py's actors: the agent it kills and restarts on one state dir, the clients that churn VMs (and what
they were told), the faults (agent SIGKILL at a chosen kind of moment, runner SIGKILL/SIGSTOP), and the full-disk
check on a small tmpfs."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from kvmplat.agent.registry.strays import runners_of
from kvmplat.client.errors import KvmplatError
from kvmplat.client.localagent import AgentNotStarted, LocalAgent
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pbg

AGENT_DOWN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
# reconnect at once after a restart (gRPC's default backoff would idle the clients for a second or more)
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 200)]


class Agent:
    """A kvmplat-agent on a fixed socket and state dir (TMP/state), which can be SIGKILLed and started again."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.state_dir = tmp, str(tmp / "state")
        self.address = f"unix://{tmp}/agent.sock"
        self.stub = pbg.AgentStub(grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS))  # type: ignore[no-untyped-call]
        self.local: LocalAgent | None = None

    def start(self) -> None:
        """Starts the agent (kvmplat.client.localagent) and waits until it answers."""
        try:
            self.local = LocalAgent.start(self.tmp, timeout=120, new_session=True)
        except AgentNotStarted as e:
            raise SystemExit(str(e)) from None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.local is not None
        self.local.proc.kill()
        self.local.proc.wait()
        self.local.client.close()

    def stop(self) -> None:
        """Destroys every VM, stops the agent, and kills any runner of its state dir left over."""
        if self.local is not None:
            with contextlib.suppress(KvmplatError):
                self.local.stop()
        for pid in runners_of(self.state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    @classmethod
    @contextlib.contextmanager
    def private(cls, prefix: str, before: Callable[[Path], None] = lambda _: None) -> Iterator[Agent]:
        """A started agent in a temp dir of its own (`before` prepares it), stopped and removed afterwards."""
        tmp = Path(tempfile.mkdtemp(prefix=f"kvmplat-{prefix}-"))
        agent = cls(tmp)
        try:
            before(tmp)
            agent.start()
            yield agent
        finally:
            agent.stop()
            if os.environ.get("KVMPLAT_BENCH_KEEP"):
                print(f"agent log kept in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)


class World:
    """What the clients were told: VMs that exist, names whose create or destroy ended with the agent's death."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.told: set[str] = set()
        self.unsure: set[str] = set()
        self.inflight: dict[str, str] = {}  # client -> the RPC it waits for

    def settle(self, stub: Any) -> None:
        """Asks the agent about each unsure name: one that exists now counts as told."""
        for name in sorted(self.unsure):
            try:
                stub.GetVm(pb.VmRequest(name=name), timeout=30)
                self.told.add(name)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                self.told.discard(name)
        self.unsure.clear()


class Client(threading.Thread):
    """Cycles VMs (create, maybe start, pause/resume a few times, stop, destroy) until finished; a cycle whose VM
    crashed or whose agent died is abandoned (its VM stays, to be checked)."""

    def __init__(self, agent: Agent, world: World, prefix: str, seed: float) -> None:
        super().__init__(daemon=True)
        self.agent, self.world, self.prefix, self.rng = agent, world, prefix, random.Random(seed)
        self.done = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.done.is_set():
            self.cycle(f"{self.prefix}-{n}")
            n += 1

    def cycle(self, name: str) -> None:
        start = self.rng.random() < 0.5
        steps = [*(["StartVm"] if not start else []), *["PauseVm", "ResumeVm"] * self.rng.randint(0, 2)]
        for rpc in ["CreateVm", *steps, "StopVm", "DestroyVm"]:
            if self.done.is_set() or not self.call(rpc, name, start):
                return
            time.sleep(self.rng.uniform(0, 0.01))

    def call(self, rpc: str, name: str, start: bool) -> bool:
        """One RPC; records what the client learns; False when the cycle cannot go on."""
        req: Any = pb.VmRequest(name=name)
        if rpc == "CreateVm":
            spec = pb.VmSpec(name=name, vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="loop"))
            req = pb.CreateVmRequest(spec=spec, start=start)
        self.world.inflight[self.prefix] = rpc
        try:
            getattr(self.agent.stub, rpc)(req, timeout=30)
        except grpc.RpcError as e:
            self.world.inflight.pop(self.prefix, None)
            if e.code() in AGENT_DOWN and rpc in ("CreateVm", "DestroyVm"):
                with self.world.lock:
                    self.world.unsure.add(name)
            if e.code() in AGENT_DOWN:
                self.wait_for_agent()
            return False
        self.world.inflight.pop(self.prefix, None)
        with self.world.lock:
            (self.world.told.add if rpc == "CreateVm" else self.world.told.discard)(name)
            if rpc == "DestroyVm":
                self.world.unsure.discard(name)
        return True

    def wait_for_agent(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(grpc.RpcError):
                self.agent.stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=2)
                return
            time.sleep(0.05)

    def finish(self) -> None:
        """Stops after the current RPC."""
        self.done.set()
        self.join(60)


class Faults:
    """The faults of one round, and their counts."""

    def __init__(self, agent: Agent, world: World, watcher: Any, rng: random.Random) -> None:
        self.agent, self.world, self.watcher, self.rng = agent, world, watcher, rng
        self.agent_kills = self.runner_kills = self.runner_stops = 0
        self.stopped: set[int] = set()
        self.lock = threading.Lock()  # no runner fault while the agent is down or restarting

    def runner_faults(self, n: int) -> None:
        """Schedules n runner faults at random moments of the next second."""
        for _ in range(n):
            t = threading.Timer(self.rng.uniform(0.05, 0.8), self.runner_fault)
            t.daemon = True
            t.start()

    def runner_fault(self) -> None:
        with self.lock:
            try:
                vms = self.agent.stub.ListVms(pb.ListVmsRequest(), timeout=5).vms
            except grpc.RpcError:
                return
            live = [v.runner_pid for v in vms if v.state in (pb.RUNNING, pb.PAUSED) and v.runner_pid]
            if not live:
                return
            pid = self.rng.choice(live)
            if self.rng.random() < 0.5:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.runner_kills += 1
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            self.stopped.add(pid)
            self.runner_stops += 1
        t = threading.Timer(self.rng.uniform(0.1, 0.6), self.continue_all)
        t.daemon = True
        t.start()

    def continue_all(self) -> None:
        """SIGCONT to every runner this round stopped."""
        for pid in list(self.stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self.stopped.discard(pid)

    def kill_agent_at(self, moment: str) -> None:
        """Waits for the moment (a client inside that kind of RPC; for catch-up, a watcher just back), SIGKILLs the
        agent a few milliseconds in, continues stopped runners, restarts the agent on the same state dir."""
        time.sleep(self.rng.uniform(0.1, 0.5))
        wanted = {"create": ("CreateVm",), "destroy": ("DestroyVm",), "record": ("StartVm", "StopVm", "CreateVm")}
        deadline = time.monotonic() + 4
        while moment in wanted and time.monotonic() < deadline:
            if any(rpc in wanted[moment] for rpc in list(self.world.inflight.values())):
                break
            time.sleep(0.0005)
        time.sleep(self.rng.uniform(0, 0.008))
        self.restart()
        if moment == "catchup":  # once more while the watcher replays what it missed
            self.watcher.attached.clear()
            self.watcher.attached.wait(10)
            time.sleep(self.rng.uniform(0, 0.005))
            self.restart()

    def restart(self) -> None:
        with self.lock:
            self.agent.kill()
            self.agent_kills += 1
            self.continue_all()
            self.agent.start()


def enospc_check(detail: list[str]) -> bool:
    """On a 4 MiB tmpfs state dir: two VMs, then the disk filled: a new VM is refused (RESOURCE_EXHAUSTED, one line),
    the two stay listed and running across a SIGKILL of the agent, and once space is back a VM can be created."""
    mounted: list[Path] = []

    def mount(tmp: Path) -> None:
        (tmp / "state").mkdir()
        cmd = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(tmp / "state")]
        subprocess.run(cmd, check=True, capture_output=True)
        mounted.append(tmp / "state")

    try:
        with Agent.private("enospc", mount) as agent:
            return _full_disk(agent, Path(agent.state_dir), detail)
    except (OSError, subprocess.CalledProcessError) as e:
        detail.append(f"enospc: cannot mount a tmpfs (needs root): {e}")
        return False
    finally:
        for m in mounted:
            subprocess.run(["umount", "--lazy", str(m)], check=False)
            shutil.rmtree(m.parent, ignore_errors=True)


def _full_disk(agent: Agent, mnt: Path, detail: list[str]) -> bool:
    def create(name: str) -> None:
        spec = pb.VmSpec(name=name, vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="loop"))
        agent.stub.CreateVm(pb.CreateVmRequest(spec=spec, start=True), timeout=30)

    def running() -> dict[str, int]:
        vms = agent.stub.ListVms(pb.ListVmsRequest(), timeout=30).vms
        return {v.spec.name: v.runner_pid for v in vms if v.state == pb.RUNNING}

    create("keep-1")
    create("keep-2")
    before = running()
    _fill(mnt / "filler")
    try:
        create("refused")
        detail.append("enospc: CreateVm on a full disk succeeded")
        return False
    except grpc.RpcError as e:
        clear = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "\n" not in (e.details() or "")
        print(f"enospc: CreateVm on a full state dir: {e.code().name}: {e.details()}")
    agent.stub.PauseVm(pb.VmRequest(name="keep-1"), timeout=30)  # its record's update fails (logged), not the VM
    agent.stub.ResumeVm(pb.VmRequest(name="keep-1"), timeout=30)
    agent.kill()
    agent.start()
    after, runners = running(), sorted(runners_of(agent.state_dir))
    (mnt / "filler").unlink()
    create("after")
    ok = clear and after == before and runners == sorted(before.values())
    if not ok:
        detail.append(f"enospc: refusal clear {clear}; before {before}, after restart {after}, runners {runners}")
    return ok


def _fill(path: Path) -> None:
    """Writes until the file system is full."""
    with path.open("wb", buffering=0) as f:
        chunk = b"\0" * 65536
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]
