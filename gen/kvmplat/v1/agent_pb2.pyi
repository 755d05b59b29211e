import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Abi(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ABI_UNSPECIFIED: _ClassVar[Abi]
    BARE_METAL: _ClassVar[Abi]
    SPAPR: _ClassVar[Abi]
    BOOKE: _ClassVar[Abi]

class Pv(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PV_UNSPECIFIED: _ClassVar[Pv]
    KVM: _ClassVar[Pv]
    HYPERV: _ClassVar[Pv]

class CompatPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPAT_POLICY_UNSPECIFIED: _ClassVar[CompatPolicy]
    STRICT: _ClassVar[CompatPolicy]
    BEST_EFFORT: _ClassVar[CompatPolicy]

class Accel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCEL_UNSPECIFIED: _ClassVar[Accel]
    AUTO: _ClassVar[Accel]
    HV: _ClassVar[Accel]
    PR: _ClassVar[Accel]

class Arch(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARCH_UNSPECIFIED: _ClassVar[Arch]
    X86_64: _ClassVar[Arch]
    PPC64: _ClassVar[Arch]
    PPC64LE: _ClassVar[Arch]
    PPC: _ClassVar[Arch]

class VmState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VM_STATE_UNSPECIFIED: _ClassVar[VmState]
    CREATED: _ClassVar[VmState]
    RUNNING: _ClassVar[VmState]
    PAUSED: _ClassVar[VmState]
    STOPPED: _ClassVar[VmState]
    CRASHED: _ClassVar[VmState]
    MIGRATING: _ClassVar[VmState]
ABI_UNSPECIFIED: Abi
BARE_METAL: Abi
SPAPR: Abi
BOOKE: Abi
PV_UNSPECIFIED: Pv
KVM: Pv
HYPERV: Pv
COMPAT_POLICY_UNSPECIFIED: CompatPolicy
STRICT: CompatPolicy
BEST_EFFORT: CompatPolicy
ACCEL_UNSPECIFIED: Accel
AUTO: Accel
HV: Accel
PR: Accel
ARCH_UNSPECIFIED: Arch
X86_64: Arch
PPC64: Arch
PPC64LE: Arch
PPC: Arch
VM_STATE_UNSPECIFIED: VmState
CREATED: VmState
RUNNING: VmState
PAUSED: VmState
STOPPED: VmState
CRASHED: VmState
MIGRATING: VmState

class PlatformSpec(_message.Message):
    __slots__ = ("abi", "pv", "compat", "compat_policy", "bits", "accel", "arch")
    ABI_FIELD_NUMBER: _ClassVar[int]
    PV_FIELD_NUMBER: _ClassVar[int]
    COMPAT_FIELD_NUMBER: _ClassVar[int]
    COMPAT_POLICY_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    ACCEL_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    abi: Abi
    pv: _containers.RepeatedScalarFieldContainer[Pv]
    compat: str
    compat_policy: CompatPolicy
    bits: int
    accel: Accel
    arch: Arch
    def __init__(self, abi: _Optional[_Union[Abi, str]] = ..., pv: _Optional[_Iterable[_Union[Pv, str]]] = ..., compat: _Optional[str] = ..., compat_policy: _Optional[_Union[CompatPolicy, str]] = ..., bits: _Optional[int] = ..., accel: _Optional[_Union[Accel, str]] = ..., arch: _Optional[_Union[Arch, str]] = ...) -> None: ...

class EffectivePlatform(_message.Message):
    __slots__ = ("abi", "pv", "compat", "compat_raw", "compat_policy", "bits", "accel", "cross_arch", "notes", "visible_above_level", "arch")
    ABI_FIELD_NUMBER: _ClassVar[int]
    PV_FIELD_NUMBER: _ClassVar[int]
    COMPAT_FIELD_NUMBER: _ClassVar[int]
    COMPAT_RAW_FIELD_NUMBER: _ClassVar[int]
    COMPAT_POLICY_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    ACCEL_FIELD_NUMBER: _ClassVar[int]
    CROSS_ARCH_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    VISIBLE_ABOVE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    abi: Abi
    pv: _containers.RepeatedScalarFieldContainer[Pv]
    compat: str
    compat_raw: int
    compat_policy: CompatPolicy
    bits: int
    accel: str
    cross_arch: bool
    notes: _containers.RepeatedScalarFieldContainer[str]
    visible_above_level: _containers.RepeatedScalarFieldContainer[str]
    arch: Arch
    def __init__(self, abi: _Optional[_Union[Abi, str]] = ..., pv: _Optional[_Iterable[_Union[Pv, str]]] = ..., compat: _Optional[str] = ..., compat_raw: _Optional[int] = ..., compat_policy: _Optional[_Union[CompatPolicy, str]] = ..., bits: _Optional[int] = ..., accel: _Optional[str] = ..., cross_arch: _Optional[bool] = ..., notes: _Optional[_Iterable[str]] = ..., visible_above_level: _Optional[_Iterable[str]] = ..., arch: _Optional[_Union[Arch, str]] = ...) -> None: ...

class BootSpec(_message.Message):
    __slots__ = ("builtin", "kernel", "initrd", "cmdline")
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    INITRD_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    builtin: str
    kernel: str
    initrd: str
    cmdline: str
    def __init__(self, builtin: _Optional[str] = ..., kernel: _Optional[str] = ..., initrd: _Optional[str] = ..., cmdline: _Optional[str] = ...) -> None: ...

class VmSpec(_message.Message):
    __slots__ = ("name", "vcpus", "memory_mib", "platform", "boot", "labels", "uuid")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    BOOT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    name: str
    vcpus: int
    memory_mib: int
    platform: PlatformSpec
    boot: BootSpec
    labels: _containers.ScalarMap[str, str]
    uuid: str
    def __init__(self, name: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., platform: _Optional[_Union[PlatformSpec, _Mapping]] = ..., boot: _Optional[_Union[BootSpec, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., uuid: _Optional[str] = ...) -> None: ...

class VmStats(_message.Message):
    __slots__ = ("exits", "exits_by_reason", "unhandled_pio", "unhandled_mmio", "console_bytes", "memory_bytes", "started", "first_console_byte", "linux_banner", "kvmplat_init")
    class ExitsByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    EXITS_FIELD_NUMBER: _ClassVar[int]
    EXITS_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    UNHANDLED_PIO_FIELD_NUMBER: _ClassVar[int]
    UNHANDLED_MMIO_FIELD_NUMBER: _ClassVar[int]
    CONSOLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FIRST_CONSOLE_BYTE_FIELD_NUMBER: _ClassVar[int]
    LINUX_BANNER_FIELD_NUMBER: _ClassVar[int]
    KVMPLAT_INIT_FIELD_NUMBER: _ClassVar[int]
    exits: int
    exits_by_reason: _containers.ScalarMap[str, int]
    unhandled_pio: int
    unhandled_mmio: int
    console_bytes: int
    memory_bytes: int
    started: _timestamp_pb2.Timestamp
    first_console_byte: _timestamp_pb2.Timestamp
    linux_banner: _timestamp_pb2.Timestamp
    kvmplat_init: _timestamp_pb2.Timestamp
    def __init__(self, exits: _Optional[int] = ..., exits_by_reason: _Optional[_Mapping[str, int]] = ..., unhandled_pio: _Optional[int] = ..., unhandled_mmio: _Optional[int] = ..., console_bytes: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., first_console_byte: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., linux_banner: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kvmplat_init: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Vm(_message.Message):
    __slots__ = ("spec", "state", "effective_platform", "runner_pid", "stats", "state_reason", "created", "last_seq")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_PLATFORM_FIELD_NUMBER: _ClassVar[int]
    RUNNER_PID_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    spec: VmSpec
    state: VmState
    effective_platform: EffectivePlatform
    runner_pid: int
    stats: VmStats
    state_reason: str
    created: _timestamp_pb2.Timestamp
    last_seq: int
    def __init__(self, spec: _Optional[_Union[VmSpec, _Mapping]] = ..., state: _Optional[_Union[VmState, str]] = ..., effective_platform: _Optional[_Union[EffectivePlatform, _Mapping]] = ..., runner_pid: _Optional[int] = ..., stats: _Optional[_Union[VmStats, _Mapping]] = ..., state_reason: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seq: _Optional[int] = ...) -> None: ...

class CompatLevel(_message.Message):
    __slots__ = ("name", "raw", "strict", "best_effort", "missing", "unhideable", "above_ceiling", "above_ceiling_features")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    BEST_EFFORT_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    UNHIDEABLE_FIELD_NUMBER: _ClassVar[int]
    ABOVE_CEILING_FIELD_NUMBER: _ClassVar[int]
    ABOVE_CEILING_FEATURES_FIELD_NUMBER: _ClassVar[int]
    name: str
    raw: int
    strict: bool
    best_effort: bool
    missing: _containers.RepeatedScalarFieldContainer[str]
    unhideable: _containers.RepeatedScalarFieldContainer[str]
    above_ceiling: bool
    above_ceiling_features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., raw: _Optional[int] = ..., strict: _Optional[bool] = ..., best_effort: _Optional[bool] = ..., missing: _Optional[_Iterable[str]] = ..., unhideable: _Optional[_Iterable[str]] = ..., above_ceiling: _Optional[bool] = ..., above_ceiling_features: _Optional[_Iterable[str]] = ...) -> None: ...

class CpuFeature(_message.Message):
    __slots__ = ("name", "level", "claimed", "seen", "hideable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    HIDEABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    level: str
    claimed: bool
    seen: bool
    hideable: bool
    def __init__(self, name: _Optional[str] = ..., level: _Optional[str] = ..., claimed: _Optional[bool] = ..., seen: _Optional[bool] = ..., hideable: _Optional[bool] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("arch", "kvm_api_version", "max_vcpus", "recommended_vcpus", "memory_mib", "memory_free_mib", "vcpus_total", "vcpus_free", "abis", "pv", "levels", "accels", "accel_default", "cpu_features", "hv_bit_hideable", "kvm_leaves_hideable", "kvm_caps", "builtin_payloads", "agent_version", "host_truth_source", "arches", "max_level")
    class KvmCapsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ARCH_FIELD_NUMBER: _ClassVar[int]
    KVM_API_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_VCPUS_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_MIB_FIELD_NUMBER: _ClassVar[int]
    VCPUS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FREE_FIELD_NUMBER: _ClassVar[int]
    ABIS_FIELD_NUMBER: _ClassVar[int]
    PV_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    ACCELS_FIELD_NUMBER: _ClassVar[int]
    ACCEL_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    CPU_FEATURES_FIELD_NUMBER: _ClassVar[int]
    HV_BIT_HIDEABLE_FIELD_NUMBER: _ClassVar[int]
    KVM_LEAVES_HIDEABLE_FIELD_NUMBER: _ClassVar[int]
    KVM_CAPS_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOST_TRUTH_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ARCHES_FIELD_NUMBER: _ClassVar[int]
    MAX_LEVEL_FIELD_NUMBER: _ClassVar[int]
    arch: str
    kvm_api_version: int
    max_vcpus: int
    recommended_vcpus: int
    memory_mib: int
    memory_free_mib: int
    vcpus_total: int
    vcpus_free: int
    abis: _containers.RepeatedScalarFieldContainer[Abi]
    pv: _containers.RepeatedScalarFieldContainer[Pv]
    levels: _containers.RepeatedCompositeFieldContainer[CompatLevel]
    accels: _containers.RepeatedScalarFieldContainer[str]
    accel_default: str
    cpu_features: _containers.RepeatedCompositeFieldContainer[CpuFeature]
    hv_bit_hideable: bool
    kvm_leaves_hideable: bool
    kvm_caps: _containers.ScalarMap[str, int]
    builtin_payloads: _containers.RepeatedScalarFieldContainer[str]
    agent_version: str
    host_truth_source: str
    arches: _containers.RepeatedScalarFieldContainer[Arch]
    max_level: str
    def __init__(self, arch: _Optional[str] = ..., kvm_api_version: _Optional[int] = ..., max_vcpus: _Optional[int] = ..., recommended_vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., memory_free_mib: _Optional[int] = ..., vcpus_total: _Optional[int] = ..., vcpus_free: _Optional[int] = ..., abis: _Optional[_Iterable[_Union[Abi, str]]] = ..., pv: _Optional[_Iterable[_Union[Pv, str]]] = ..., levels: _Optional[_Iterable[_Union[CompatLevel, _Mapping]]] = ..., accels: _Optional[_Iterable[str]] = ..., accel_default: _Optional[str] = ..., cpu_features: _Optional[_Iterable[_Union[CpuFeature, _Mapping]]] = ..., hv_bit_hideable: _Optional[bool] = ..., kvm_leaves_hideable: _Optional[bool] = ..., kvm_caps: _Optional[_Mapping[str, int]] = ..., builtin_payloads: _Optional[_Iterable[str]] = ..., agent_version: _Optional[str] = ..., host_truth_source: _Optional[str] = ..., arches: _Optional[_Iterable[_Union[Arch, str]]] = ..., max_level: _Optional[str] = ...) -> None: ...

class StateChange(_message.Message):
    __slots__ = ("to", "reason")
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    to: VmState
    reason: str
    def __init__(self, to: _Optional[_Union[VmState, str]] = ..., reason: _Optional[str] = ..., **kwargs) -> None: ...

class ConsoleText(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ExitSummary(_message.Message):
    __slots__ = ("reason", "vcpu", "detail", "registers", "instruction")
    class RegistersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    REASON_FIELD_NUMBER: _ClassVar[int]
    VCPU_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REGISTERS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    reason: str
    vcpu: int
    detail: str
    registers: _containers.ScalarMap[str, int]
    instruction: bytes
    def __init__(self, reason: _Optional[str] = ..., vcpu: _Optional[int] = ..., detail: _Optional[str] = ..., registers: _Optional[_Mapping[str, int]] = ..., instruction: _Optional[bytes] = ...) -> None: ...

class ErrorEvent(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "vm", "time", "state", "console", "exit", "error")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONSOLE_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    vm: str
    time: _timestamp_pb2.Timestamp
    state: StateChange
    console: ConsoleText
    exit: ExitSummary
    error: ErrorEvent
    def __init__(self, seq: _Optional[int] = ..., vm: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[StateChange, _Mapping]] = ..., console: _Optional[_Union[ConsoleText, _Mapping]] = ..., exit: _Optional[_Union[ExitSummary, _Mapping]] = ..., error: _Optional[_Union[ErrorEvent, _Mapping]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class GetCapabilitiesRequest(_message.Message):
    __slots__ = ("refresh",)
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    refresh: bool
    def __init__(self, refresh: _Optional[bool] = ...) -> None: ...

class CheckPlatformRequest(_message.Message):
    __slots__ = ("spec", "platform_only")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_ONLY_FIELD_NUMBER: _ClassVar[int]
    spec: VmSpec
    platform_only: bool
    def __init__(self, spec: _Optional[_Union[VmSpec, _Mapping]] = ..., platform_only: _Optional[bool] = ...) -> None: ...

class CheckPlatformResponse(_message.Message):
    __slots__ = ("effective_platform",)
    EFFECTIVE_PLATFORM_FIELD_NUMBER: _ClassVar[int]
    effective_platform: EffectivePlatform
    def __init__(self, effective_platform: _Optional[_Union[EffectivePlatform, _Mapping]] = ...) -> None: ...

class CreateVmRequest(_message.Message):
    __slots__ = ("spec", "start")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    spec: VmSpec
    start: bool
    def __init__(self, spec: _Optional[_Union[VmSpec, _Mapping]] = ..., start: _Optional[bool] = ...) -> None: ...

class VmRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DestroyVmResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVmsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVmsResponse(_message.Message):
    __slots__ = ("vms",)
    VMS_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[Vm]
    def __init__(self, vms: _Optional[_Iterable[_Union[Vm, _Mapping]]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("vm", "since_seq", "follow")
    VM_FIELD_NUMBER: _ClassVar[int]
    SINCE_SEQ_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    vm: str
    since_seq: int
    follow: bool
    def __init__(self, vm: _Optional[str] = ..., since_seq: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class WriteConsoleRequest(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class WriteConsoleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RestoreVmRequest(_message.Message):
    __slots__ = ("name", "paused", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    paused: bool
    data: bytes
    def __init__(self, name: _Optional[str] = ..., paused: _Optional[bool] = ..., data: _Optional[bytes] = ...) -> None: ...

class MigrateVmRequest(_message.Message):
    __slots__ = ("name", "target")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: str
    def __init__(self, name: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class MigrationProgress(_message.Message):
    __slots__ = ("phase", "round", "bytes_sent", "dirty_pages", "expected_downtime_ms", "downtime_ms", "total_ms", "target", "pages_sent", "zero_pages", "throttle_percent")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    DIRTY_PAGES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PAGES_SENT_FIELD_NUMBER: _ClassVar[int]
    ZERO_PAGES_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    phase: str
    round: int
    bytes_sent: int
    dirty_pages: int
    expected_downtime_ms: int
    downtime_ms: int
    total_ms: int
    target: str
    pages_sent: int
    zero_pages: int
    throttle_percent: int
    def __init__(self, phase: _Optional[str] = ..., round: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., dirty_pages: _Optional[int] = ..., expected_downtime_ms: _Optional[int] = ..., downtime_ms: _Optional[int] = ..., total_ms: _Optional[int] = ..., target: _Optional[str] = ..., pages_sent: _Optional[int] = ..., zero_pages: _Optional[int] = ..., throttle_percent: _Optional[int] = ...) -> None: ...

class CpuidEntry(_message.Message):
    __slots__ = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    EAX_FIELD_NUMBER: _ClassVar[int]
    EBX_FIELD_NUMBER: _ClassVar[int]
    ECX_FIELD_NUMBER: _ClassVar[int]
    EDX_FIELD_NUMBER: _ClassVar[int]
    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int
    def __init__(self, function: _Optional[int] = ..., index: _Optional[int] = ..., flags: _Optional[int] = ..., eax: _Optional[int] = ..., ebx: _Optional[int] = ..., ecx: _Optional[int] = ..., edx: _Optional[int] = ...) -> None: ...

class MigrationOffer(_message.Message):
    __slots__ = ("spec", "effective_platform", "cpuid", "arch", "source")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CPUID_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    spec: VmSpec
    effective_platform: EffectivePlatform
    cpuid: _containers.RepeatedCompositeFieldContainer[CpuidEntry]
    arch: str
    source: str
    def __init__(self, spec: _Optional[_Union[VmSpec, _Mapping]] = ..., effective_platform: _Optional[_Union[EffectivePlatform, _Mapping]] = ..., cpuid: _Optional[_Iterable[_Union[CpuidEntry, _Mapping]]] = ..., arch: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class MigrationCommit(_message.Message):
    __slots__ = ("first_seq",)
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    def __init__(self, first_seq: _Optional[int] = ...) -> None: ...

class MigrationPacket(_message.Message):
    __slots__ = ("offer", "pages", "state", "commit")
    OFFER_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    offer: MigrationOffer
    pages: bytes
    state: bytes
    commit: MigrationCommit
    def __init__(self, offer: _Optional[_Union[MigrationOffer, _Mapping]] = ..., pages: _Optional[bytes] = ..., state: _Optional[bytes] = ..., commit: _Optional[_Union[MigrationCommit, _Mapping]] = ...) -> None: ...

class MigrationReply(_message.Message):
    __slots__ = ("accepted", "prepared", "committed")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    prepared: bool
    committed: Vm
    def __init__(self, accepted: _Optional[bool] = ..., prepared: _Optional[bool] = ..., committed: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...
