"""The agent↔runner boundary: every message is a frozen dataclass defined here, sent as one JSON line.

    agent -> template  Spawn(config: RunnerConfig, id)        -> SpawnReply(id, Spawned(pid) | Failure)  (overlapping)
    template -> agent  SpareReady(pid, hint), with the agent's end of a socket pair to the spare (fd passing)
    agent -> spare     Spawn(config)                          -> Spawned(pid) | Failure, then as agent -> runner
    agent -> runner    Call(id, op, since, data)              -> Reply(id, result | error)
                       op "hello"   -> Hello                   (then the ring after `since`, in seq order)
                       op "start" | "pause" | "resume" | "stop" | "destroy" -> StateReply
                       op "stats"   -> RunnerStats,  op "console" -> Accepted
                       move ops (moveops.py): "memory" -> MemoryFd, "freeze" -> Frozen,
                       "migrate_begin" (Note: target) | "migrate_abort" (Note: why) | "migrate_done" (Note: target)
                       -> StateReply, "dirty" -> DirtyPages, "throttle" (ThrottleTo) -> StateReply,
                       "migrate_stop" -> FinalCopy, "load" (LoadState) -> Loaded, "arrive" (Arrival) -> Arrived
    runner -> agent    RunnerEvent(seq, time, body: StateChange | ConsoleText | ExitReport)   (unsolicited)

`encode` and `decode` are the one pair: a dataclass becomes a JSON object tagged with its class name ("t"), lists
come back as tuples (an untagged object is a JSON document, such as a frozen machine state, and comes back as it
was), and an object naming no class of this module is a ValueError. Errors cross as `Failure`
(kind, message, field violations), rebuilt from one table of the agent's error kinds (`failure_of`, `error_of`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from kvmplat.agent import errors

__all__ = [
    "LINK_ENV",
    "MAX_LINE",
    "Accepted",
    "Args",
    "Arrival",
    "Arrived",
    "BootSource",
    "Call",
    "ConsoleText",
    "DirtyPages",
    "ExitReport",
    "Failure",
    "FinalCopy",
    "Frozen",
    "Hello",
    "LoadState",
    "Loaded",
    "MemoryFd",
    "Note",
    "Reply",
    "Result",
    "RunnerConfig",
    "RunnerEvent",
    "RunnerStats",
    "SpareReady",
    "Spawn",
    "SpawnReply",
    "Spawned",
    "StateChange",
    "StateReply",
    "ThrottleTo",
    "decode",
    "encode",
    "error_of",
    "failure_of",
]

MAX_LINE = 4 << 20
LINK_ENV = "KVMPLAT_TEMPLATE_LINK_FD"  # the template's socket to its agent (SOCK_SEQPACKET), on which spares go


@dataclass(frozen=True)
class BootSource:
    """What the guest boots: a built-in payload, or a Linux kernel (with initrd and command line)."""

    builtin: str = ""
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""


@dataclass(frozen=True)
class RunnerConfig:
    """Everything a runner needs to build its VM; `cpuid` rows are (function, index, flags, eax, ebx, ecx, edx)."""

    name: str
    vcpus: int
    memory_mib: int
    socket: str = ""
    boot: BootSource = BootSource(builtin="probe")
    cpuid: tuple[tuple[int, ...], ...] | None = None  # None: what the host's KVM supports
    image_dirs: tuple[str, ...] | None = None  # the runner checks again what it really opened; None: no check
    first_seq: int = 1  # the number of its first event: a restarted VM continues its sequence
    restart: bool = False  # a new runner for a STOPPED VM booting again (STOPPED --start--> RUNNING)
    incoming: str = ""  # a restore or an incoming migration (why): built silent, from a frozen state, not booted

    def shape(self) -> RunnerConfig:
        """What of the config its machine depends on: everything but the VM's name, socket and event numbering."""
        return replace(self, name="", socket="", first_seq=1, restart=False)


@dataclass(frozen=True)
class Spawn:
    """Asks the template for a runner."""

    config: RunnerConfig
    id: int = 0


@dataclass(frozen=True)
class Spawned:
    """The runner listens on its socket."""

    pid: int


@dataclass(frozen=True)
class SpareReady:
    """The template's word to the agent, with the agent's end of a socket pair to a spare: spare `pid` waits at the
    other end for the Spawn it builds; `hint` is the config whose machine it built ahead (None: none)."""

    pid: int
    hint: RunnerConfig | None = None


@dataclass(frozen=True)
class SpawnReply:
    """The template's answer to Spawn `id` (spawns overlap: answers come as their runners get ready)."""

    id: int
    answer: Spawned | Failure


@dataclass(frozen=True)
class Note:
    """A move op's text: the target of migrate_begin and migrate_done, why of migrate_abort."""

    text: str


@dataclass(frozen=True)
class ThrottleTo:
    """Auto-converge: the share of each period (percent, 0..99) the migrating guest's vCPUs are held paused."""

    percent: int


@dataclass(frozen=True)
class LoadState:
    """The frozen machine state (vmstate.py's JSON document) for an incoming VM, with its milestones."""

    state: dict[str, Any]
    milestones: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Arrival:
    """An incoming VM starts: its first event's number, whether it stays PAUSED, and why it is here."""

    first_seq: int
    paused: bool
    reason: str


Args = Note | ThrottleTo | LoadState | Arrival


@dataclass(frozen=True)
class Call:
    """A request to a runner: `since` with hello, base64 `data` with console, `args` with the move ops."""

    id: int
    op: str
    since: int = 0
    data: str = ""
    args: Args | None = None


@dataclass(frozen=True)
class Hello:
    """A runner's answer to hello: its state, the newest sequence number it used, and its counters."""

    state: str
    reason: str
    pid: int
    last_seq: int
    stats: RunnerStats | None = None


@dataclass(frozen=True)
class StateReply:
    """The state after a lifecycle request, and the counters then (the caller's reply carries them: no second
    round trip)."""

    state: str
    reason: str = ""
    stats: RunnerStats | None = None


@dataclass(frozen=True)
class Accepted:
    """Console bytes the guest's UART took."""

    count: int


@dataclass(frozen=True)
class RunnerStats:
    """Exit counters summed over the vCPUs; `milestones` maps a VmStats field to wall-clock seconds."""

    exits: int = 0
    unhandled_pio: int = 0
    unhandled_mmio: int = 0
    console_bytes: int = 0
    by_reason: tuple[tuple[int, int], ...] = ()  # (KVM exit reason, count)
    memory_bytes: int = 0
    milestones: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """An error of the agent's tree, by kind, with its message and (InvalidArgument) field violations."""

    kind: str
    message: str
    violations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MemoryFd:
    """Where the agent maps guest memory (/proc/PID/fd/FD, SIZE bytes) and the exact CPUID table the guest has."""

    pid: int
    fd: int
    size: int
    cpuid: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Frozen:
    """A PAUSED VM's machine state (vmstate.py's document), its newest sequence number and its milestones."""

    state: dict[str, Any]
    last_seq: int
    milestones: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DirtyPages:
    """The pages written since the last look, as a base64 bitmap (bit i: page i)."""

    bitmap: str


@dataclass(frozen=True)
class FinalCopy:
    """The guest stopped for the last copy: its last dirty pages, its machine state, its newest sequence number."""

    bitmap: str
    state: dict[str, Any]
    last_seq: int


@dataclass(frozen=True)
class Loaded:
    """What the host refused of a loaded state (MSRs it does not have), as notes."""

    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Arrived:
    """An incoming VM's state once it runs here, and its newest sequence number."""

    state: str
    last_seq: int


Result = Hello | StateReply | Accepted | RunnerStats | MemoryFd | Frozen | DirtyPages | FinalCopy | Loaded | Arrived


@dataclass(frozen=True)
class Reply:
    """A runner's answer to Call `id`: a result, or the error that refused it."""

    id: int
    result: Result | None = None
    error: Failure | None = None


@dataclass(frozen=True)
class StateChange:
    """A lifecycle transition (state names of lifecycle.State; `old` is "" for the first)."""

    old: str
    new: str
    reason: str


@dataclass(frozen=True)
class ConsoleText:
    """Console output: a line, or a piece of one."""

    text: str


@dataclass(frozen=True)
class ExitReport:
    """How the guest ended: verdict, vCPU, plain-language detail, KVM's exit name; for a crash its registers and
    (emulation failure) the instruction bytes as hex."""

    reason: str
    vcpu: int
    detail: str
    exit: str = ""
    registers: dict[str, int] = field(default_factory=dict)
    instruction: str = ""


@dataclass(frozen=True)
class RunnerEvent:
    """One event of a VM, numbered per VM (1, 2, ...)."""

    seq: int
    time: float
    body: StateChange | ConsoleText | ExitReport


_MESSAGES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        BootSource,
        RunnerConfig,
        Spawn,
        Spawned,
        SpareReady,
        SpawnReply,
        Note,
        ThrottleTo,
        LoadState,
        Arrival,
        Call,
        Hello,
        StateReply,
        Accepted,
        RunnerStats,
        MemoryFd,
        Frozen,
        DirtyPages,
        FinalCopy,
        Loaded,
        Arrived,
        Failure,
        Reply,
        StateChange,
        ConsoleText,
        ExitReport,
        RunnerEvent,
    )
}


_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in _MESSAGES.values()}


def encode(msg: Any) -> bytes:
    """One message as a newline-terminated JSON line."""
    return json.dumps(_plain(msg), separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Any:
    """One JSON line back into its message; ValueError when it is not one of this module's."""
    msg = _typed(json.loads(line))
    if type(msg).__name__ not in _MESSAGES:
        raise ValueError("a runner message must be a tagged JSON object")
    return msg


_SCALARS = (str, int, float, type(None))  # bool is an int


def _plain(value: Any) -> Any:
    if isinstance(value, _SCALARS):  # first: most values are (a CPUID table is ~600 ints)
        return value
    if isinstance(value, tuple | list):
        return [v if isinstance(v, _SCALARS) else _plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    names = _FIELDS.get(type(value))
    if names is not None:
        return {"t": type(value).__name__, **{n: _plain(getattr(value, n)) for n in names}}
    if is_dataclass(value) and not isinstance(value, type):
        return {"t": type(value).__name__, **{f.name: _plain(getattr(value, f.name)) for f in fields(value)}}
    return value


def _typed(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(v if isinstance(v, _SCALARS) else _typed(v) for v in value)
    if not isinstance(value, dict) or "t" not in value:
        return value  # a scalar, or a JSON document (a dict field) exactly as it was sent
    items = {k: _typed(v) for k, v in value.items() if k != "t"}
    cls = _MESSAGES.get(str(value["t"]))
    if cls is None:
        raise ValueError(f"unknown runner message {value['t']!r}")
    try:
        return cls(**items)
    except TypeError as e:
        raise ValueError(f"bad {cls.__name__}: {e}") from None


# Kinds that cross the boundary: a subclass crosses as the nearest of these (PlatformRefused and IllegalTransition
# as FailedPrecondition, KvmError as HostError); the message always crosses whole.
_KINDS: dict[str, type[errors.KvmplatError]] = {
    cls.__name__: cls
    for cls in (
        errors.InvalidArgument,
        errors.NotFound,
        errors.AlreadyExists,
        errors.FailedPrecondition,
        errors.ResourceExhausted,
        errors.PermissionDenied,
        errors.Unavailable,
        errors.HostError,
    )
}


def failure_of(e: BaseException) -> Failure:
    """The wire form of an error (HostError for anything outside the agent's tree)."""
    if not isinstance(e, errors.KvmplatError):
        return Failure("HostError", f"runner failed: {type(e).__name__}: {e}")
    kind = next((c.__name__ for c in type(e).__mro__ if c.__name__ in _KINDS), "HostError")
    violations = tuple(e.violations) if isinstance(e, errors.InvalidArgument) else ()
    return Failure(kind, str(e), violations)


def error_of(failure: Failure) -> errors.KvmplatError:
    """The agent's error for a Failure the runner sent (HostError for a kind this agent does not know)."""
    cls = _KINDS.get(failure.kind, errors.HostError)
    if cls is errors.InvalidArgument:
        return errors.InvalidArgument(failure.message, [(f, d) for f, d in failure.violations])
    return cls(failure.message)
