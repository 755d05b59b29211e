"""The cffi struct layouts (agent/kvm/cbuild.py) against the installed kernel's <linux/kvm.h>, compiled with gcc."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from kvmplat.agent.kvm._kvmc import ffi

# (struct, member path or "" for sizeof)
CHECKS = [
    ("kvm_run", ""),
    ("kvm_run", "immediate_exit"),
    ("kvm_run", "exit_reason"),
    ("kvm_run", "io.port"),
    ("kvm_run", "io.data_offset"),
    ("kvm_run", "mmio.phys_addr"),
    ("kvm_run", "mmio.is_write"),
    ("kvm_run", "internal.suberror"),
    ("kvm_run", "internal.data"),
    ("kvm_run", "system_event.type"),
    ("kvm_run", "fail_entry.cpu"),
    ("kvm_run", "kvm_valid_regs"),
    ("kvm_run", "s"),
    ("kvm_regs", ""),
    ("kvm_regs", "rsi"),
    ("kvm_regs", "rip"),
    ("kvm_regs", "rflags"),
    ("kvm_segment", ""),
    ("kvm_segment", "unusable"),
    ("kvm_dtable", ""),
    ("kvm_sregs", ""),
    ("kvm_sregs", "gdt"),
    ("kvm_sregs", "cr0"),
    ("kvm_sregs", "efer"),
    ("kvm_sregs", "interrupt_bitmap"),
    ("kvm_cpuid_entry2", ""),
    ("kvm_cpuid_entry2", "edx"),
    ("kvm_cpuid2", ""),
    ("kvm_userspace_memory_region", ""),
    ("kvm_userspace_memory_region", "userspace_addr"),
    ("kvm_pit_config", ""),
    ("kvm_irq_level", ""),
    ("kvm_mp_state", ""),
    ("kvm_enable_cap", ""),
    ("kvm_enable_cap", "args"),
    ("kvm_one_reg", ""),
    ("kvm_ppc_pvinfo", ""),
    ("kvm_ppc_pvinfo", "hcall"),
    ("kvm_fpu", ""),
    ("kvm_fpu", "xmm"),
    ("kvm_fpu", "mxcsr"),
    ("kvm_msr_entry", ""),
    ("kvm_msrs", ""),
    ("kvm_msrs", "entries"),
    ("kvm_msr_list", ""),
    ("kvm_lapic_state", ""),
    ("kvm_vcpu_events", ""),
    ("kvm_vcpu_events", "sipi_vector"),
    ("kvm_vcpu_events", "smi"),
    ("kvm_vcpu_events", "exception_has_payload"),
    ("kvm_vcpu_events", "exception_payload"),
    ("kvm_debugregs", ""),
    ("kvm_debugregs", "dr7"),
    ("kvm_xsave", ""),
    ("kvm_xcrs", ""),
    ("kvm_xcrs", "xcrs"),
    ("kvm_xcrs", "padding"),
    ("kvm_irqchip", ""),
    ("kvm_irqchip", "chip"),
    ("kvm_pit_channel_state", ""),
    ("kvm_pit_channel_state", "count_load_time"),
    ("kvm_pit_state2", ""),
    ("kvm_pit_state2", "flags"),
    ("kvm_clock_data", ""),
    ("kvm_clock_data", "realtime"),
    ("kvm_clock_data", "host_tsc"),
    ("kvm_dirty_log", ""),
    ("kvm_dirty_log", "dirty_bitmap"),
    ("kvm_stats_header", ""),
    ("kvm_stats_desc", ""),
]


def _ffi_value(struct: str, member: str) -> int:
    ctype = f"struct {struct}"
    if not member:
        return int(ffi.sizeof(ctype))
    return int(ffi.offsetof(ctype, *member.split(".")))


def _kernel_values(tmp: Path) -> list[int]:
    lines = [
        f'printf("%zu\\n", {"sizeof(struct " + s + ")" if not m else "offsetof(struct " + s + ", " + m + ")"});'
        for s, m in CHECKS
    ]
    src = tmp / "layout.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\nint main(void){\n"
        + "\n".join(lines)
        + "\nreturn 0;}\n"
    )
    exe = tmp / "layout"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


@pytest.mark.skipif(
    not shutil.which("gcc") or not Path("/usr/include/linux/kvm.h").exists(),
    reason="needs gcc and linux-libc-dev (make test installs them)",
)
def test_every_layout_matches_the_kernel_header(tmp_path: Path) -> None:
    kernel = _kernel_values(tmp_path)
    mismatches = [
        (s, m, ours, theirs)
        for (s, m), theirs in zip(CHECKS, kernel, strict=True)
        if (ours := _ffi_value(s, m)) != theirs
    ]
    assert mismatches == []


def test_powerpc_struct_sizes_match_the_abi_reference() -> None:
    # Computed in reference/KVM_ABI.md §1 (no ppc header on an x86 host): kvm_regs 392, kvm_sregs 1232.
    assert ffi.sizeof("struct ppc_kvm_regs") == 392
    assert ffi.sizeof("struct ppc_kvm_sregs") == 1232
    assert ffi.offsetof("struct ppc_kvm_regs", "gpr") == 136
