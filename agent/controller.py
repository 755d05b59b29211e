"""The agent's controller: owns the VM records, decides every request through the transition table, talks to the
runners and feeds the event bus. It knows nothing of gRPC: requests arrive as protos-free calls, errors leave as
the agent's error tree.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from kvmplat.agent.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from kvmplat.agent.events import Bus, event_from_runner
from kvmplat.agent.lifecycle import Event, State, next_state
from kvmplat.agent.platforms import Platforms
from kvmplat.agent.runner.client import RunnerClient, RunnerLost, TemplateClient
from kvmplat.agent.store import Store
from kvmplat.agent.validate import Limits, validate_name, validate_spec
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["Controller", "VmRecord"]

log = logging.getLogger("kvmplat.agent")
LIVE = (State.CREATED, State.RUNNING, State.PAUSED)
# A runner that died while no agent watched may have emitted events nobody saw; the agent's own CRASHED event
# then jumps this far past the last sequence number it knew, a gap every watcher can see.
ADOPT_SEQ_GAP = 4096


@dataclass
class VmRecord:
    """What the agent knows of one VM."""

    spec: pb.VmSpec
    effective: pb.EffectivePlatform
    socket: str
    state: State = State.CREATED
    reason: str = ""
    pid: int = 0
    last_seq: int = 0
    created: float = field(default_factory=time.time)
    runner: RunnerClient | None = None
    destroying: bool = False

    @property
    def name(self) -> str:
        """The VM's name."""
        return self.spec.name

    def to_json(self) -> dict[str, Any]:
        """The persisted form."""
        return {
            "name": self.name,
            "spec": json_format.MessageToDict(self.spec),
            "effective": json_format.MessageToDict(self.effective),
            "socket": self.socket,
            "pid": self.pid,
            "state": self.state.name,
            "reason": self.reason,
            "last_seq": self.last_seq,
            "created": self.created,
        }


class Controller:
    """VM registry and lifecycle; one per agent."""

    def __init__(
        self,
        store: Store,
        template: TemplateClient,
        platforms: Platforms,
        limits: Limits,
        total_memory_mib: int,
        total_vcpus: int,
    ) -> None:
        self.store, self.template, self.platforms, self.limits = store, template, platforms, limits
        self.total_memory_mib, self.total_vcpus = total_memory_mib, total_vcpus
        self.bus = Bus()
        self.vms: dict[str, VmRecord] = {}
        self.closing = False
        self._creating: set[str] = set()

    # --- resources ---------------------------------------------------------------------------------------------
    def used(self) -> tuple[int, int]:
        """Memory (MiB) and vCPUs held by VMs that still have a guest."""
        live = [r for r in self.vms.values() if r.state in LIVE]
        return sum(r.spec.memory_mib for r in live), sum(r.spec.vcpus for r in live)

    def _reserve(self, spec: pb.VmSpec) -> None:
        mem, cpus = self.used()
        if mem + spec.memory_mib > self.total_memory_mib:
            left = self.total_memory_mib - mem
            raise ResourceExhausted(f"spec.memory_mib {spec.memory_mib} MiB exceeds what is left: {left} MiB")
        if cpus + spec.vcpus > self.total_vcpus:
            left = self.total_vcpus - cpus
            raise ResourceExhausted(f"spec.vcpus {spec.vcpus} exceeds what is left: {left} vCPUs")

    # --- requests ----------------------------------------------------------------------------------------------
    def check(self, spec: pb.VmSpec) -> pb.EffectivePlatform:
        """The effective platform the spec would get, or the refusal."""
        return self.platforms.resolve(spec.platform)[0]

    def get(self, name: str) -> VmRecord:
        """The record of VM `name`."""
        validate_name(name)
        try:
            return self.vms[name]
        except KeyError:
            raise NotFound(f"no VM named {name!r}") from None

    async def create(self, spec: pb.VmSpec, start: bool) -> VmRecord:
        """Validates, resolves the platform, spawns the runner; the VM is CREATED (or RUNNING with `start`)."""
        validate_spec(spec, self.limits)
        if spec.name in self.vms or spec.name in self._creating:
            raise AlreadyExists(f"a VM named {spec.name!r} exists already")
        effective, cpuid = self.platforms.resolve(spec.platform)
        self._reserve(spec)
        self._creating.add(spec.name)
        try:
            rec = VmRecord(spec=spec, effective=effective, socket=self.store.socket_path(spec.name))
            config = {
                "name": spec.name,
                "vcpus": spec.vcpus,
                "memory_mib": spec.memory_mib,
                "socket": rec.socket,
                "boot": json_format.MessageToDict(spec.boot, preserving_proto_field_name=True),
                "cpuid": cpuid,
            }
            rec.pid = await self.template.spawn(config)
            self.vms[spec.name] = rec
            self.store.save(rec.name, rec.to_json())
            await self._connect(rec, since=0)
        finally:
            self._creating.discard(spec.name)
        return await self.act(spec.name, Event.START) if start else rec

    async def act(self, name: str, event: Event) -> VmRecord:
        """start, pause, resume or stop, checked against the transition table before the runner is asked."""
        rec = self.get(name)
        next_state(name, rec.state, event)
        if rec.runner is None or rec.runner.closed:
            raise FailedPrecondition(f"VM {name!r} has no runner (it is {rec.state.name}: {rec.reason})")
        await rec.runner.call(event.value)
        return rec

    async def destroy(self, name: str) -> None:
        """Ends the VM's runner and forgets the VM (STOPPED or CRASHED VMs, or CREATED ones)."""
        rec = self.get(name)
        next_state(name, rec.state, Event.DESTROY)
        rec.destroying = True
        if rec.runner is not None and not rec.runner.closed:
            with contextlib.suppress(RunnerLost):
                await rec.runner.call("destroy")
            await rec.runner.close()
        del self.vms[name]
        self.store.delete(name)
        self.bus.forget(name)

    async def stats(self, rec: VmRecord) -> dict[str, Any]:
        """The runner's counters (empty when it is gone)."""
        if rec.runner is None or rec.runner.closed:
            return {}
        try:
            return await rec.runner.call("stats", timeout=2.0)
        except (Unavailable, FailedPrecondition, ResourceExhausted):  # gone or hung: no counters
            return {}

    async def write_console(self, name: str, data: bytes) -> None:
        """Bytes typed at the VM's serial console."""
        import base64

        rec = self.get(name)
        if rec.runner is None or rec.runner.closed:
            raise FailedPrecondition(f"VM {name!r} is {rec.state.name}: its console takes input only while RUNNING")
        await rec.runner.call("console", data=base64.b64encode(data).decode())

    def watch(self, vm: str, since: int, follow: bool) -> AsyncIterator[pb.Event]:
        """Events of one VM (or all), resumable after `since`."""
        if vm:
            self.get(vm)
        return self.bus.watch(vm, since, follow)

    # --- runners -----------------------------------------------------------------------------------------------
    async def _connect(self, rec: VmRecord, since: int) -> None:
        rec.runner = await RunnerClient.connect(
            rec.socket, lambda e: self._on_event(rec, e), lambda: self._on_lost(rec)
        )
        hello = await rec.runner.call("hello", since=since)
        rec.pid = int(hello["pid"])
        rec.state, rec.reason = State[hello["state"]], str(hello["reason"])

    def _on_event(self, rec: VmRecord, e: dict[str, Any]) -> None:
        if int(e["seq"]) <= rec.last_seq:
            return  # already seen (a replay after re-adoption)
        rec.last_seq = int(e["seq"])
        if "state" in e and e["state"].get("to") in State.__members__:
            rec.state, rec.reason = State[e["state"]["to"]], str(e["state"].get("reason", ""))
            if rec.state is not State.DESTROYED and not rec.destroying:
                self.store.save(rec.name, rec.to_json(), durable=False)  # the runner holds the truth
        self.bus.publish(event_from_runner(rec.name, e))

    def _on_lost(self, rec: VmRecord) -> None:
        if self.closing or rec.destroying or self.vms.get(rec.name) is not rec:
            return
        rec.runner = None
        if rec.state in LIVE:
            alive = _alive(rec.pid)
            how = "closed its connection" if alive else "died"
            why = f"runner (pid {rec.pid}) {how} while the VM was {rec.state.name}"
            self._crash(rec, why, rec.last_seq + 1)

    def _crash(self, rec: VmRecord, why: str, seq: int) -> None:
        """Records a CRASHED state change that the agent itself observed (the runner cannot report it)."""
        self._on_event(
            rec, {"seq": seq, "time": time.time(), "state": {"from": rec.state.name, "to": "CRASHED", "reason": why}}
        )
        log.warning("VM %s crashed: %s", rec.name, why)

    async def adopt_all(self) -> None:
        """Re-adopts the runners of the VMs in the state directory (after an agent restart)."""
        for data in self.store.load_all():
            try:
                spec = json_format.ParseDict(data["spec"], pb.VmSpec())
                eff = json_format.ParseDict(data.get("effective", {}), pb.EffectivePlatform())
                rec = VmRecord(
                    spec=spec,
                    effective=eff,
                    socket=data["socket"],
                    pid=int(data.get("pid", 0)),
                    state=State[data.get("state", "CREATED")],
                    reason=data.get("reason", ""),
                    created=float(data.get("created", time.time())),
                )
            except (KeyError, ValueError, json_format.ParseError) as e:
                log.error("skipping VM record %s: %s", data.get("name"), e)
                continue
            self.vms[rec.name] = rec
            try:
                await self._connect(rec, since=0)
                log.info("re-adopted VM %s (runner pid %d, %s)", rec.name, rec.pid, rec.state.name)
            except (RunnerLost, OSError) as e:
                rec.runner = None
                if rec.state in LIVE:
                    self._crash(
                        rec,
                        f"runner (pid {rec.pid}) was gone when the agent restarted ({e})",
                        int(data.get("last_seq", 0)) + ADOPT_SEQ_GAP,
                    )

    async def close(self) -> None:
        """Disconnects from the runners (they keep running for the next agent)."""
        self.closing = True
        for rec in self.vms.values():
            if rec.runner is not None:
                await rec.runner.close()
        await self.template.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
