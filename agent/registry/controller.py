"""The agent's controller: owns the VM records, decides every request through the transition table, talks to the
runners and feeds the event bus. It knows nothing of gRPC: requests arrive as protos-free calls, errors leave as
the agent's error tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from kvmplat.agent.api.validate import Limits, validate_name, validate_spec
from kvmplat.agent.errors import (
    AlreadyExists,
    FailedPrecondition,
    KvmplatError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from kvmplat.agent.registry import creation, recovery
from kvmplat.agent.registry.events import Bus, event_from_runner
from kvmplat.agent.registry.hostview import Platforms
from kvmplat.agent.registry.lifecycle import LIVE, Event, State, next_state
from kvmplat.agent.registry.peer import PeerTls
from kvmplat.agent.registry.placement import Claims, consumer_of
from kvmplat.agent.registry.recordwriter import RecordWriter
from kvmplat.agent.registry.runnerlink import RunnerClient, RunnerLost, TemplateClient
from kvmplat.agent.registry.spares import Started, Streams
from kvmplat.agent.registry.store import Store
from kvmplat.agent.runner.wire import BootSource, RunnerConfig, RunnerEvent, RunnerStats, StateChange
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["Controller", "VmRecord"]

log = logging.getLogger("kvmplat.agent")
# Sequence numbers are reserved in blocks: before the agent publishes an event beyond the block recorded in the VM's
# state file, it durably records the next block. A runner that died while no agent watched may have emitted events
# nobody saw; the agent's own CRASHED event then takes the number after the recorded block: above every number any
# watcher of an earlier agent saw (no reuse), and a gap every watcher can see.
SEQ_BLOCK = 4096
ADOPT_SEQ_GAP = SEQ_BLOCK  # for records written before blocks were recorded: past the last known number


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
    seq_reserved: int = SEQ_BLOCK
    created: float = field(default_factory=time.time)
    runner: RunnerClient | None = None
    greeted: bool = False  # the runner answered hello: its replay reached last_seq, the newest number it used
    destroying: bool = False
    moving: str = ""  # what a snapshot or migration is doing with the VM; other requests wait until it is done
    saved: bool = False  # PAUSED and unchanged since a whole snapshot was taken: destroy may stop it first
    stats: RunnerStats | None = None  # the counters the runner sent with its last answer to hello or a request
    held: list[RunnerEvent] | None = None  # a new VM's events, published once its record is on disk
    _fixed: dict[str, Any] = field(default_factory=dict, repr=False)  # spec and effective platform as JSON, once

    @property
    def name(self) -> str:
        """The VM's name."""
        return self.spec.name

    def _fixed_json(self) -> dict[str, Any]:
        if not self._fixed:  # neither changes after create; converting them was most of each record write
            self._fixed.update(
                spec=json_format.MessageToDict(self.spec), effective=json_format.MessageToDict(self.effective)
            )
        return self._fixed

    def to_json(self) -> dict[str, Any]:
        """The persisted form."""
        return {
            "name": self.name,
            **self._fixed_json(),
            "socket": self.socket,
            "pid": self.pid,
            "state": self.state.name,
            "reason": self.reason,
            "last_seq": self.last_seq,
            "seq_reserved": self.seq_reserved,
            "created": self.created,
            **({"destroying": True} if self.destroying else {}),
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
        self.records = RecordWriter(store)
        self.total_memory_mib, self.total_vcpus = total_memory_mib, total_vcpus
        self.bus = Bus()
        self.vms: dict[str, VmRecord] = {}
        self.closing = False
        self.creating: set[str] = set()  # names being created or arriving: taken
        self.incoming: dict[str, VmRecord] = {}  # VMs arriving (restore, migration): not listed, but they hold memory
        self.seq_block = SEQ_BLOCK
        self.peer_tls: PeerTls | None = None  # this agent's certificate, key and CA, for dialling migration targets
        self.address = ""  # where this agent listens (named in migration events)
        self.pending: dict[str, pb.VmSpec] = {}  # VMs being created: they hold resources already
        self.claims: Claims | None = None  # with Placement: every VM's resources are claimed there too

    # --- resources ---------------------------------------------------------------------------------------------
    def used(self) -> tuple[int, int]:
        """Memory (MiB) and vCPUs held by VMs that still have a guest, or are being created. With Placement every
        VM holds its claim until it is destroyed (a STOPPED VM may start again), so every VM counts."""
        recs = (*self.vms.values(), *self.incoming.values())
        live = [r.spec for r in recs if r.state in LIVE or self.claims is not None]
        live += self.pending.values()
        return sum(s.memory_mib for s in live), sum(s.vcpus for s in live)

    def reserve(self, spec: pb.VmSpec) -> None:
        """Refuses a VM beyond the memory or vCPUs this agent has left."""
        mem, cpus = self.used()
        if mem + spec.memory_mib > self.total_memory_mib:
            left = self.total_memory_mib - mem
            raise ResourceExhausted(f"spec.memory_mib {spec.memory_mib} MiB exceeds what is left: {left} MiB")
        if cpus + spec.vcpus > self.total_vcpus:
            left = self.total_vcpus - cpus
            raise ResourceExhausted(f"spec.vcpus {spec.vcpus} exceeds what is left: {left} vCPUs")

    # --- requests ----------------------------------------------------------------------------------------------
    def check(self, spec: pb.VmSpec, platform_only: bool = False) -> pb.EffectivePlatform:
        """A dry run of `create`: the effective platform the spec would get, or the refusal `create` would give now
        (the same checks, in the same order, by the same code; only a VM of the same name is not a refusal).
        `platform_only`: the platform's resolution alone, for a guest kvmplat will not run."""
        if platform_only:
            return self.platforms.resolve(spec.platform)[0]
        return self._admit(spec)[0]

    def _admit(self, spec: pb.VmSpec, held: bool = False) -> tuple[pb.EffectivePlatform, list[list[int]]]:
        """Everything `create` checks before it spawns a runner: the spec's fields, limits, boot source and images,
        the platform, and what is left of the host (unless the VM is `held`: a STOPPED VM with its Placement claim);
        returns the effective platform and its CPUID table."""
        validate_spec(spec, self.limits)
        effective, cpuid = self.platforms.resolve(spec.platform)
        if not (held and self.claims is not None):
            self.reserve(spec)
        return effective, cpuid

    def get(self, name: str) -> VmRecord:
        """The record of VM `name`."""
        validate_name(name)
        try:
            return self.vms[name]
        except KeyError:
            raise NotFound(f"no VM named {name!r}") from None

    def idle(self, name: str) -> VmRecord:
        """The record of VM `name`, refused while a snapshot or migration works on it."""
        rec = self.get(name)
        if rec.moving:
            raise FailedPrecondition(f"VM {name!r} is {rec.moving}; try again when that is done")
        return rec

    async def create(self, spec: pb.VmSpec, start: bool) -> VmRecord:
        """Validates, resolves the platform, spawns the runner; the VM is CREATED (or RUNNING with `start`)."""
        validate_spec(spec, self.limits)
        if spec.name in self.vms or spec.name in self.creating:
            raise AlreadyExists(f"a VM named {spec.name!r} exists already")
        effective, cpuid = self._admit(spec)
        spec = self._with_uuid(spec)
        self.creating.add(spec.name)  # before any await: a concurrent create counts this one's room
        self.pending[spec.name] = spec
        # shielded: a caller that goes away (cancelled, deadline) must not leave a runner that no record names
        rec = await asyncio.shield(creation.start(self, spec, effective, cpuid))
        return await self.act(spec.name, Event.START) if start else rec

    def runner_config(
        self, rec: VmRecord, cpuid: Sequence[Sequence[int]], restart: bool = False, incoming: str = ""
    ) -> RunnerConfig:
        """What a runner of `rec` is told: its VM, socket, boot source, exact CPUID table, the first sequence number
        (a restart continues the VM's sequence), and for a restore or an incoming migration why it is built silent."""
        spec = rec.spec
        return RunnerConfig(
            name=spec.name,
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            socket=rec.socket,
            boot=BootSource(spec.boot.builtin, spec.boot.kernel, spec.boot.initrd, spec.boot.cmdline),
            cpuid=tuple(tuple(row) for row in cpuid),
            # the runner checks again what it really opened: a path swapped after validation is refused
            image_dirs=tuple(os.path.realpath(d) for d in self.limits.image_dirs),
            first_seq=rec.last_seq + 1,  # one VM, one sequence: a restart continues it
            restart=restart,
            incoming=incoming,
        )

    async def act(self, name: str, event: Event) -> VmRecord:
        """start, pause, resume or stop, checked against the transition table before the runner is asked; start of a
        STOPPED VM boots its spec again in a new runner."""
        rec = self.idle(name)
        next_state(name, rec.state, event)
        rec.saved = False
        if event is Event.START and rec.state is State.STOPPED:
            await self._restart(rec)
        if rec.runner is None or rec.runner.closed:
            raise FailedPrecondition(f"VM {name!r} has no runner (it is {rec.state.name}: {rec.reason})")
        rec.stats = (await rec.runner.request(event)).stats
        return rec

    async def _restart(self, rec: VmRecord) -> None:
        """Replaces a STOPPED VM's runner by a fresh one for the same spec (admitted again: the host may have less
        room, or another platform truth, than when the VM was created). The new runner starts out STOPPED."""
        if rec.name in self.creating:
            raise FailedPrecondition(f"VM {rec.name!r} is being started already")
        effective, cpuid = self._admit(rec.spec, held=True)
        self.creating.add(rec.name)
        try:
            old, rec.runner = rec.runner, None  # from here its loss is not this VM's crash
            if old is not None and not old.closed:
                with contextlib.suppress(KvmplatError):
                    await old.request(Event.DESTROY)
                await old.close()
            self.store.unlink_socket(rec.name)
            rec.effective, rec._fixed = effective, {}
            started = await self.template.spawn(self.runner_config(rec, cpuid, restart=True))
            rec.pid = started.pid
            await self.connect(rec, since=rec.last_seq, streams=started.streams)
        finally:
            self.creating.discard(rec.name)

    async def destroy(self, name: str, force: bool = False) -> None:
        """Ends the VM's runner and forgets the VM (STOPPED or CRASHED VMs, or CREATED ones; with `force`, a RUNNING
        or PAUSED VM is stopped first)."""
        rec = self.idle(name)
        forced = force and rec.state in (State.RUNNING, State.PAUSED)
        if forced or (rec.saved and rec.state is State.PAUSED):  # a saved one's state lives on in a snapshot
            with contextlib.suppress(FailedPrecondition):  # it may end on its own meanwhile: then it is STOPPED
                await self.act(name, Event.STOP)
        next_state(name, rec.state, Event.DESTROY)
        rec.destroying = True
        # recorded (and waited for) before the runner is told: an agent killed in the middle of this destroy leaves a
        # record that the next agent finishes destroying, not a STOPPED VM whose runner has gone
        with contextlib.suppress(OSError):  # disk full: destroyed all the same
            await asyncio.wrap_future(self.records.save(name, rec.to_json(), first=True))
        if rec.runner is not None and not rec.runner.closed:
            with contextlib.suppress(RunnerLost):
                await rec.runner.request(Event.DESTROY)
            await rec.runner.close()
        del self.vms[name]
        self.store.unlink_socket(name)  # now, before the name can be reused: a new runner will listen there
        self.bus.forget(name)
        # not waited for: the writer keeps each VM's writes in order (a new VM of this name is written after it), and
        # an agent killed before it lands finds the record marked and finishes the destroy
        self.records.delete(name)
        if self.claims is not None:
            await self.claims.release(consumer_of(rec.spec.uuid, name, rec.created), name)

    # --- placement claims ----------------------------------------------------------------------------------------
    def _uuid_taken(self, vm_uuid: str) -> bool:
        recs = (*self.vms.values(), *self.incoming.values())
        return vm_uuid in {s.uuid for s in (*(r.spec for r in recs), *self.pending.values())}

    def _with_uuid(self, spec: pb.VmSpec) -> pb.VmSpec:
        """The spec with its UUID (a new one when empty); AlreadyExists when another VM here has it."""
        if not spec.uuid:
            spec = _copy(spec)
            spec.uuid = str(uuidlib.uuid4())
        if self._uuid_taken(spec.uuid):
            raise AlreadyExists(f"spec.uuid {spec.uuid} belongs to another VM on this agent")
        return spec

    def arrival_uuid(self, spec: pb.VmSpec) -> None:
        """Keeps an arriving VM's UUID (a migration moves its claim), or gives it a new one when it has none or a VM
        here has it (a snapshot restored beside its original)."""
        if not spec.uuid or self._uuid_taken(spec.uuid):
            spec.uuid = str(uuidlib.uuid4())

    async def claim(self, spec: pb.VmSpec, beside: bool = False) -> None:
        """Claims the spec's resources in Placement (when configured), `beside` what its UUID holds elsewhere."""
        if self.claims is not None:
            res = {"VCPU": spec.vcpus, "MEMORY_MB": spec.memory_mib}
            await self.claims.claim(spec.uuid, spec.name, res, beside)

    async def release_arrival(self, spec: pb.VmSpec) -> None:
        """Gives back an arriving VM's claim (its arrival failed)."""
        if self.claims is not None:
            await self.claims.release(spec.uuid, spec.name)

    async def spawn(self, spec: pb.VmSpec, config: RunnerConfig, taken: Callable[[int], None]) -> Started:
        """Starts the runner (`taken` hears a spare's pid first); a runner that cannot start gives its claim back."""
        try:
            return await self.template.spawn(config, taken)
        except BaseException:
            if self.claims is not None:
                await self.claims.release(spec.uuid, spec.name)
            raise

    async def stats(self, rec: VmRecord) -> RunnerStats | None:
        """The runner's counters (None when it is gone)."""
        if rec.runner is None or rec.runner.closed:
            return None
        try:
            return await rec.runner.stats()
        except (Unavailable, FailedPrecondition, ResourceExhausted):  # gone or hung: no counters
            return None

    async def write_console(self, name: str, data: bytes) -> None:
        """Bytes typed at the VM's serial console."""
        rec = self.get(name)
        if rec.runner is None or rec.runner.closed:
            raise FailedPrecondition(f"VM {name!r} is {rec.state.name}: its console takes input only while RUNNING")
        await rec.runner.console(data)

    def snapshot(self, name: str) -> AsyncIterator[bytes]:
        """The snapshot of a PAUSED VM, as the file's bytes in pieces (SnapshotVm)."""
        from kvmplat.agent.registry import snapops

        return snapops.snapshot(self, name)

    async def restore(self, name: str, paused: bool, chunks: AsyncIterator[bytes]) -> VmRecord:
        """A VM built from a snapshot stream, checked whole first (RestoreVm)."""
        from kvmplat.agent.registry import snapops

        return await snapops.restore(self, name, paused, chunks)

    def migrate(self, name: str, target: str) -> AsyncIterator[pb.MigrationProgress]:
        """Moves a RUNNING VM live to the agent at `target` (MigrateVm)."""
        from kvmplat.agent.registry import migration

        return migration.migrate(self, name, target)

    def receive(self, packets: AsyncIterator[pb.MigrationPacket]) -> AsyncIterator[Any]:
        """The target's side of a migration (ReceiveVm): "accepted", "prepared", then the VmRecord."""
        from kvmplat.agent.registry import migration

        return migration.receive(self, packets)

    def watch(
        self, vm: str, since: int, follow: bool, as_framed: bool = False, linger: tuple[float, float] = (0.0, 0.0)
    ) -> AsyncIterator[list[bytes]]:
        """Batches of serialized events of one VM (or all), resumable after `since` (see Bus.watch)."""
        if vm:
            self.get(vm)
        return self.bus.watch(vm, since, follow, as_framed, linger)

    # --- runners -----------------------------------------------------------------------------------------------
    async def connect(self, rec: VmRecord, since: int, streams: Streams | None = None) -> None:
        """Connects to the runner of `rec` and says hello (its events after `since` follow), or takes `streams`, a
        spare's, where the hello went with its config (the same `since`: the runner's ring starts at first_seq)."""
        runner = await RunnerClient.connect(
            rec.socket, lambda e: self.on_event(rec, e), lambda: self._on_lost(rec, runner), streams
        )
        rec.runner = runner
        hello = await rec.runner.hello(since, sent=streams is not None)
        rec.pid, rec.stats = hello.pid, hello.stats
        rec.state, rec.reason = State[hello.state], hello.reason
        rec.greeted = True

    def on_event(self, rec: VmRecord, e: RunnerEvent) -> None:
        """Takes a runner's event: the VM's state and record follow it, then every watcher gets it."""
        if rec.held is not None:
            rec.held.append(e)
            return
        if e.seq <= rec.last_seq:
            return  # already seen (a replay after re-adoption)
        rec.last_seq = e.seq
        if rec.last_seq > rec.seq_reserved and not rec.destroying:
            rec.seq_reserved = rec.last_seq + SEQ_BLOCK  # recorded before any watcher sees a number past the old block
            self._persist(rec, durable=True)
        if isinstance(e.body, StateChange) and e.body.new in State.__members__:
            old, rec.state, rec.reason = rec.state, State[e.body.new], e.body.reason
            # the runner holds the truth; the record only has to tell a later agent whether a VM whose runner is gone
            # was live (then CRASHED) or had ended, and why: RUNNING <-> PAUSED changes neither, so it is not written
            toggle = {old, rec.state} == {State.RUNNING, State.PAUSED}
            if rec.state is not State.DESTROYED and not rec.destroying and not toggle:
                self._persist(rec, durable=False)
        self.bus.publish(event_from_runner(rec.name, e))

    def _persist(self, rec: VmRecord, durable: bool) -> None:
        """Queues the VM's record for writing; a durable write is waited for (it is rare: a new block of sequence
        numbers). A failed write (disk full) is logged by the writer, never allowed to end the runner's stream."""
        done = self.records.save(rec.name, rec.to_json(), durable=durable)
        if durable:
            with contextlib.suppress(Exception):  # the writer has logged it
                done.result()

    def _on_lost(self, rec: VmRecord, runner: RunnerClient) -> None:
        if self.closing or rec.destroying or self.vms.get(rec.name) is not rec or rec.runner is not runner:
            return  # an old runner replaced by a restart is no loss
        rec.runner = None
        if rec.state in LIVE:
            alive = _alive(rec.pid)
            how = "closed its connection" if alive else "died"
            why = f"runner (pid {rec.pid}) {how} while the VM was {rec.state.name}"
            # before hello, an earlier agent may have shown numbers this one has not seen yet: skip its whole block
            self._crash(rec, why, rec.last_seq + 1 if rec.greeted else rec.seq_reserved + 1)

    def _crash(self, rec: VmRecord, why: str, seq: int) -> None:
        """Records a CRASHED state change that the agent itself observed (the runner cannot report it)."""
        self.on_event(rec, RunnerEvent(seq, time.time(), StateChange(rec.state.name, State.CRASHED.name, why)))
        log.warning("VM %s crashed: %s", rec.name, why)

    async def adopt_all(self) -> None:
        """Re-adopts the runners of the VMs in the state directory (after an agent restart), all at once: a record
        that cannot be used, or a runner that is gone or does not answer, costs only its own VM."""
        recs = []
        for data in self.store.load_all():
            rec = _record_from(data)
            if rec is None:
                continue
            if rec.name in self.vms:
                log.error("skipping VM record %s: a record of that name was loaded already", data.get("name"))
                continue
            self.vms[rec.name] = rec
            recs.append(rec)
        recs = await recovery.before_adoption(self, recs)
        await asyncio.gather(*(self._adopt(rec) for rec in recs))

    async def _adopt(self, rec: VmRecord) -> None:
        try:
            await recovery.reconnect(self, rec)
            log.info("re-adopted VM %s (runner pid %d, %s)", rec.name, rec.pid, rec.state.name)
        except RunnerLost as e:
            if rec.runner is not None:
                await rec.runner.close()
            rec.runner = None
            if rec.state in LIVE:
                why = f"runner (pid {rec.pid}) was gone when the agent restarted ({e})"
                self._crash(rec, why, rec.seq_reserved + 1)
        except (KvmplatError, KeyError, ValueError, TypeError) as e:  # no answer (stopped, stuck in an ioctl), or
            # an answer this agent cannot read: the VM keeps its recorded state, and events still flow if it wakes
            log.error("VM %s: its runner (pid %d) did not answer the agent: %s", rec.name, rec.pid, e)
            rec.reason = f"runner (pid {rec.pid}) did not answer when the agent restarted: {e}"

    async def close(self) -> None:
        """Disconnects from the runners (they keep running for the next agent)."""
        self.closing = True
        for rec in self.vms.values():
            if rec.runner is not None:
                await rec.runner.close()
        await self.template.close()
        await asyncio.to_thread(self.records.close)


def _record_from(data: dict[str, Any]) -> VmRecord | None:
    """A VM record from its state file's contents; None (reported) when it cannot be used."""
    try:
        spec = json_format.ParseDict(data["spec"], pb.VmSpec())
        validate_name(spec.name)
        if spec.name != data.get("name", spec.name):
            raise ValueError(f"its name {data.get('name')!r} differs from its spec's {spec.name!r}")
        last_seq = int(data.get("last_seq", 0))
        return VmRecord(
            spec=spec,
            effective=json_format.ParseDict(data.get("effective", {}), pb.EffectivePlatform()),
            socket=str(data["socket"]),
            pid=int(data.get("pid", 0)),
            state=State[data.get("state", "CREATED")],
            reason=str(data.get("reason", "")),
            seq_reserved=max(int(data.get("seq_reserved", 0)), last_seq + ADOPT_SEQ_GAP),
            created=float(data.get("created", time.time())),
            destroying=bool(data.get("destroying", False)),
        )
    except (KeyError, ValueError, TypeError, AttributeError, json_format.ParseError, KvmplatError) as e:
        log.error("skipping VM record %s: %s", data.get("name"), e)
        return None


def _copy(spec: pb.VmSpec) -> pb.VmSpec:
    out = pb.VmSpec()
    out.CopyFrom(spec)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
