"""Know the x86 host by asking guests: what a guest sees with KVM's full CPUID table and what clearing bits hides.

KVM_GET_SUPPORTED_CPUID is not the truth on every host (THIS_HOST.md section 4: kvm_pvm shows guests features it
does not list and ignores some cleared bits), so two tiny real-mode guests execute CPUID for every leaf a level
feature lives in: one under the full supported table with the hypervisor bit set (as a VMM sets it: real KVM never
lists CPUID.1:ECX[31] in KVM_GET_SUPPORTED_CPUID, X86_LAB.md), one under a table with every level feature, the
hypervisor bit and the 0x4000_0000 leaves removed. The bit is hideable when the first guest sees it and the second
does not. Each guest runs ~40 instructions and stops on `hlt` (no irqchip, so HLT
exits to userspace). The result is cached as JSON, keyed by kernel release, CPU model and accelerator.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import struct
import time
from pathlib import Path

from kvmplat.agent.errors import HostError, KvmError
from kvmplat.agent.kvm.fds import ExitReason, Kvm
from kvmplat.agent.kvm.ioctls import Cap
from kvmplat.agent.platform.levels import X86_FEATURES, CpuidBit
from kvmplat.agent.platform.x86 import HV_BIT, REG_INDEX, masked_table, with_bit
from kvmplat.agent.platform.x86host import FeatureTruth, Row, X86Host

__all__ = ["X86Host", "accel_name", "guest_cpuid", "load_or_probe", "probe_host"]

KVM_SIGNATURE = (0x4B4D564B, 0x564B4D56, 0x0000004D)  # "KVMKVMKVM\0\0\0"
CODE_ADDR, OUT_ADDR, MEM_SIZE = 0x1000, 0x2000, 0x10000
CACHE_VERSION = 3  # 3: tsc_deadline; 2: the hypervisor bit measured set vs cleared (1 read it from the supported table)
Leaf = tuple[int, int]
View = dict[Leaf, tuple[int, int, int, int]]


def _code(leaves: list[Leaf]) -> bytes:
    """Real-mode code: for each leaf, CPUID and store eax..edx at OUT_ADDR + 16 * i; then hlt."""
    code = b""
    for i, (leaf, sub) in enumerate(leaves):
        out = OUT_ADDR + 16 * i
        code += b"\x66\xb8" + struct.pack("<I", leaf) + b"\x66\xb9" + struct.pack("<I", sub) + b"\x0f\xa2"
        code += b"\x66\xa3" + struct.pack("<H", out)  # mov [out], eax
        for modrm, off in ((0x1E, 4), (0x0E, 8), (0x16, 12)):  # mov [out+off], ebx / ecx / edx
            code += b"\x66\x89" + bytes([modrm]) + struct.pack("<H", out + off)
    return code + b"\xf4"


def guest_cpuid(kvm: Kvm, rows: list[Row], leaves: list[Leaf]) -> View:
    """What a real-mode guest reads from CPUID for each of `leaves` under the table `rows`."""
    with kvm.create_vm() as vm:
        vm.set_tss_addr(0xFFFBD000)  # Intel VMX without unrestricted guest needs it for real mode
        mem = vm.add_memory(MEM_SIZE)
        mem.write(CODE_ADDR, _code(leaves))
        with vm.create_vcpu(0) as vcpu:
            vcpu.set_cpuid2(rows)
            sregs = vcpu.get_sregs()
            for seg in (sregs.cs, sregs.ds, sregs.es, sregs.ss):
                seg.base, seg.selector = 0, 0
            vcpu.set_sregs(sregs)
            regs = vcpu.get_regs()
            regs.rip, regs.rflags = CODE_ADDR, 0x2
            vcpu.set_regs(regs)
            reason = vcpu.run()
            if reason != ExitReason.HLT:
                raise HostError(f"CPUID probe guest stopped with exit {reason!r} instead of HLT")
        raw = mem.read(OUT_ADDR, 16 * len(leaves))
    return {lf: struct.unpack_from("<4I", raw, 16 * i) for i, lf in enumerate(leaves)}


def _has(view: View | dict[Leaf, tuple[int, ...]], b: CpuidBit) -> bool:
    regs = view.get((b.leaf, b.subleaf))
    return bool(regs and regs[REG_INDEX[b.reg]] >> b.bit & 1)


def _row_view(rows: list[Row]) -> dict[Leaf, tuple[int, ...]]:
    """The table as a guest would read it if KVM honoured it exactly (flags bit 0: subleaf significant)."""
    view: dict[Leaf, tuple[int, ...]] = {}
    for fn, idx, flags, *regs in rows:
        view[(fn, idx if flags & 1 else 0)] = tuple(regs)
    return view


def _hyperv_rows(kvm: Kvm) -> list[Row]:
    """Hyper-V leaves KVM can offer; none where it was built without Hyper-V (EINVAL) or lacks the cap."""
    if not kvm.check_extension(Cap.SYS_HYPERV_CPUID):
        return []
    try:
        return kvm.get_supported_hv_cpuid()
    except KvmError as e:
        if e.errno in (errno.EINVAL, errno.ENOTTY):  # no Hyper-V emulation in this KVM
            return []
        raise


def accel_name(sys_module: str = "/sys/module") -> str:
    """kvm_pvm, kvm-intel or kvm-amd, from the loaded modules (kvm_pvm wins: it replaces hardware KVM)."""
    for module, name in (("kvm_pvm", "kvm_pvm"), ("kvm_intel", "kvm-intel"), ("kvm_amd", "kvm-amd")):
        if os.path.isdir(os.path.join(sys_module, module)):
            return name
    return "kvm"


def probe_host(kvm: Kvm) -> X86Host:
    """Measures the host's truth with two probe guests (full table with the hypervisor bit set, everything hideable
    cleared)."""
    t0 = time.perf_counter()
    full = kvm.get_supported_cpuid()
    leaves = sorted({(b.leaf, b.subleaf) for b in (*X86_FEATURES, HV_BIT)} | {(0x40000000, 0)})
    shown = with_bit(full, HV_BIT, True)  # the VMM's job: real KVM never lists it (kvm_pvm does)
    masked = [r for r in masked_table(full, [*X86_FEATURES, HV_BIT]) if not 0x40000000 <= r[0] < 0x50000000]
    seen, hidden = guest_cpuid(kvm, shown, leaves), guest_cpuid(kvm, masked, leaves)
    claimed = _row_view(full)
    feats = tuple(
        FeatureTruth(b.name, b.level, _has(claimed, b), _has(seen, b), not _has(hidden, b)) for b in X86_FEATURES
    )
    hv_rows = _hyperv_rows(kvm)
    return X86Host(
        accel=accel_name(),
        supported=tuple(full),
        features=feats,
        hv_bit_hideable=_has(seen, HV_BIT) and not _has(hidden, HV_BIT),
        kvm_leaves_hideable=hidden[(0x40000000, 0)][1:] != KVM_SIGNATURE,
        hyperv=bool(hv_rows),
        tsc_deadline=bool(kvm.check_extension(Cap.TSC_DEADLINE_TIMER)),
        hv_supported=tuple(hv_rows),
        kernel_release=platform.release(),
        cpu_model=_cpu_model(),
        probe_ms=round((time.perf_counter() - t0) * 1000, 2),
        source="probe guests",
    )


def _cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """`model name` plus family/model/stepping of the first CPU: a new CPU invalidates the cache."""
    keys = ("vendor_id", "cpu family", "model", "stepping", "model name")
    found: dict[str, str] = {}
    with contextlib.suppress(OSError), open(cpuinfo) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() in keys and key.strip() not in found:
                found[key.strip()] = value.strip()
            if not line.strip():
                break
    return " / ".join(found.get(k, "?") for k in keys)


def _cache_key() -> dict[str, str]:
    return {"kernel_release": platform.release(), "cpu_model": _cpu_model(), "accel": accel_name()}


def load_or_probe(kvm: Kvm, cache_path: str | os.PathLike[str], refresh: bool = False) -> X86Host:
    """The cached truth when it matches this kernel, CPU and accelerator; else probes and rewrites the cache."""
    path = Path(cache_path)
    if not refresh:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text())
            if data.get("version") == CACHE_VERSION and data.get("key") == _cache_key():
                host = X86Host.from_json(data["host"])
                return X86Host.from_json({**host.to_json(), "source": "cache"})
    host = probe_host(kvm)
    _write_atomic(path, {"version": CACHE_VERSION, "key": _cache_key(), "host": host.to_json()})
    return host


def _write_atomic(path: Path, data: dict[str, object]) -> None:
    """Writes JSON to a temporary sibling and renames it, so a reader never sees half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
