"""Platforms verified from inside the guest on a KVM that honours the CPUID table (run by inside.py in the x86 lab).

For each case a `probe` guest is created through the agent; its console's `cpuid LEAF SUB EAX EBX ECX EDX` lines are
compared with the table the agent set (the agent's own resolution and cpuid_table over the host truth it measured,
read from its state directory), and the platform's promises are checked one by one: features above the level absent,
the hypervisor bit set iff some pv is declared, leaf 0x4000_0000 `KVMKVMKVM` for KVM and `Microsoft Hv` for HYPERV
(0x4000_0001 `Hv#1`; KVM's leaves move to 0x4000_0100 beside Hyper-V), nothing of an undeclared pv visible.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from kvmplat.agent.platform.levels import X86_FEATURES, x86_level_number
from kvmplat.agent.platform.proto import effective_to_proto, request_from_proto
from kvmplat.agent.platform.resolve import resolve
from kvmplat.agent.platform.x86 import REG_INDEX, cpuid_table, for_vcpu
from kvmplat.agent.platform.x86host import X86Host
from kvmplat.client.agent import Client
from kvmplat.v1 import agent_pb2 as pb

Regs = tuple[int, int, int, int]
LINE = re.compile(r"cpuid ([0-9a-f]{8}) ([0-9a-f]{8}) ([0-9a-f]{8}) ([0-9a-f]{8}) ([0-9a-f]{8}) ([0-9a-f]{8})")
KVM_SIG = (0x4B4D564B, 0x564B4D56, 0x0000004D)  # "KVMKVMKVM\0\0\0" in ebx, ecx, edx
HV_SIG = (0x7263694D, 0x666F736F, 0x76482074)  # "Microsoft Hv"
HV_INTERFACE = 0x31237648  # "Hv#1" in 0x4000_0001 eax
# Bits KVM computes at run time, not from the table (Intel SDM / KVM's kvm_update_cpuid_runtime): CPUID.1 EBX's
# initial APIC id, OSXSAVE (CR4) and the APIC bit (APIC base MSR); 7.0 ECX OSPKE (CR4); 0xD.0 EBX (XCR0's size).
DYNAMIC: dict[tuple[int, int], Regs] = {
    (1, 0): (0, 0xFF000000, 1 << 27, 1 << 9),
    (7, 0): (0, 0, 1 << 4, 0),
    (0xD, 0): (0, 0xFFFFFFFF, 0, 0),
}
CASES: dict[str, dict[str, Any]] = {
    "BARE_METAL": {"abi": pb.BARE_METAL},
    "KVM": {"abi": pb.BARE_METAL, "pv": [pb.KVM]},
    "HYPERV": {"abi": pb.BARE_METAL, "pv": [pb.HYPERV]},
    "KVM+HYPERV": {"abi": pb.BARE_METAL, "pv": [pb.KVM, pb.HYPERV]},
    "x86-64-v1": {"abi": pb.BARE_METAL, "compat": "x86-64-v1"},
    "x86-64-v2": {"abi": pb.BARE_METAL, "compat": "x86-64-v2"},
    "x86-64-v3": {"abi": pb.BARE_METAL, "compat": "x86-64-v3"},
    "best_effort-v1": {"abi": pb.BARE_METAL, "compat": "x86-64-v1", "compat_policy": pb.BEST_EFFORT},
}


def parse(text: str) -> dict[tuple[int, int], Regs]:
    """The probe's CPUID lines by (leaf, subleaf)."""
    return {
        (int(m[1], 16), int(m[2], 16)): (int(m[3], 16), int(m[4], 16), int(m[5], 16), int(m[6], 16))
        for m in LINE.finditer(text)
    }


def expected(rows: list[tuple[int, ...]], leaf: tuple[int, int], amd: bool) -> Regs | None:
    """What the table gives vCPU 0 for `leaf`: its row, zeros for a leaf it lacks on AMD (None on Intel, which
    answers an absent leaf with the highest basic one)."""
    for fn, idx, flags, a, b, c, d in for_vcpu(rows, 0):
        if fn == leaf[0] and (idx == leaf[1] or not flags & 1):
            return (a, b, c, d)
    return (0, 0, 0, 0) if amd else None


def compare(seen: dict[tuple[int, int], Regs], rows: list[tuple[int, ...]], amd: bool) -> list[str]:
    """Differences between the probe's lines and the table, outside the DYNAMIC bits."""
    diffs = []
    for leaf, regs in sorted(seen.items()):
        want = expected(rows, leaf, amd)
        if want is None:
            continue
        mask = DYNAMIC.get(leaf, (0, 0, 0, 0))
        for i, name in enumerate(("eax", "ebx", "ecx", "edx")):
            if (regs[i] ^ want[i]) & ~mask[i] & 0xFFFFFFFF:
                diffs.append(f"{leaf[0]:#x}.{leaf[1]} {name}: guest {regs[i]:#010x}, table {want[i]:#010x}")
    return diffs


def promises(seen: dict[tuple[int, int], Regs], effective: pb.EffectivePlatform) -> list[str]:
    """The platform's promises the guest's view breaks (empty when all hold)."""
    pv = set(effective.pv)
    broken = []
    hv_bit = bool(seen[(1, 0)][2] >> 31 & 1)
    if hv_bit != bool(pv):
        broken.append(f"hypervisor bit {'set' if hv_bit else 'clear'} with pv {sorted(pb.Pv.Name(p) for p in pv)}")
    base, moved = seen.get((0x40000000, 0), (0, 0, 0, 0)), seen.get((0x40000100, 0), (0, 0, 0, 0))
    iface = seen.get((0x40000001, 0), (0, 0, 0, 0))[0]
    kvm_at = moved if pb.HYPERV in pv else base
    checks = {
        "0x40000000 reads Microsoft Hv": (base[1:] == HV_SIG) == (pb.HYPERV in pv),
        "0x40000001 reads Hv#1": (iface == HV_INTERFACE) == (pb.HYPERV in pv),
        "KVMKVMKVM where KVM's leaves belong": (kvm_at[1:] == KVM_SIG) == (pb.KVM in pv),
        "no KVMKVMKVM anywhere without pv KVM": pb.KVM in pv or KVM_SIG not in (base[1:], moved[1:]),
    }
    broken += [what for what, held in checks.items() if not held]
    if effective.compat.startswith("x86-64-v"):
        level = x86_level_number(effective.compat)
        for b in X86_FEATURES:
            regs = seen.get((b.leaf, b.subleaf))
            if x86_level_number(b.level) > level and regs and regs[REG_INDEX[b.reg]] >> b.bit & 1:
                broken.append(f"{b.name} ({b.level}) visible above {effective.compat}")
    return broken


def host_truth(state_dir: Path) -> X86Host:
    """The host truth the agent measured (its cache in the state directory)."""
    return X86Host.from_json(json.loads((state_dir / "host-truth.json").read_text())["host"])


def run_case(client: Client, host: X86Host, name: str, platform: dict[str, Any]) -> dict[str, Any]:
    """One probe guest under `platform`; the verdict with what differed."""
    vm_name = f"view-{name.lower().replace('+', '-').replace('_', '-')}"
    spec = pb.VmSpec(name=vm_name, vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="probe"))
    spec.platform.CopyFrom(pb.PlatformSpec(**platform))
    effective = resolve(request_from_proto(spec.platform), host)
    rows = cpuid_table(effective, host)
    vm = client.create_vm(spec, start=True)
    same_platform = vm.effective_platform == effective_to_proto(effective)
    deadline = time.monotonic() + 60
    while (vm := client.get_vm(vm_name)).state not in (pb.STOPPED, pb.CRASHED) and time.monotonic() < deadline:
        time.sleep(0.05)
    text = "".join(e.console.text for e in client.watch_events(vm=vm_name, follow=False) if e.HasField("console"))
    client.destroy_vm(vm_name)
    seen = parse(text)
    amd = seen.get((0, 0), (0, 0x68747541))[1] == 0x68747541  # "Auth"enticAMD
    diffs = compare(seen, rows, amd) if seen else ["no cpuid lines on the console"]
    broken = promises(seen, vm.effective_platform) if (1, 0) in seen else []
    if not same_platform:
        diffs.append("the agent's effective platform differs from its own resolution over its host truth")
    return {
        "case": name,
        "ok": vm.state == pb.STOPPED and not diffs and not broken,
        "state": pb.VmState.Name(vm.state),
        "compat": vm.effective_platform.compat,
        "table_differs": diffs,
        "promises_broken": broken,
        "leaves": len(seen),
    }


def verify_all(client: Client, state_dir: Path) -> dict[str, dict[str, Any]]:
    """Every case of CASES, by name."""
    host = host_truth(state_dir)
    return {name: run_case(client, host, name, platform) for name, platform in CASES.items()}
