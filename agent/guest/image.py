"""What a boot loader produces: guest memory contents plus the initial vCPU state, as frozen values.

Loaders (built-in payloads, Linux bzImage/ELF) are pure functions `... -> GuestImage`; the runner copies the segments
into guest memory and applies the CPU state before the first KVM_RUN. Nothing here touches /dev/kvm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CpuState", "GuestImage", "Segment", "SegmentReg"]


@dataclass(frozen=True)
class SegmentReg:
    """One x86 segment register as KVM's struct kvm_segment holds it."""

    base: int = 0
    limit: int = 0xFFFF
    selector: int = 0
    type: int = 0x3  # data read/write, accessed
    present: int = 1
    dpl: int = 0
    db: int = 0
    s: int = 1
    l: int = 0  # noqa: E741 - the kernel's field name
    g: int = 0


@dataclass(frozen=True)
class CpuState:
    """Initial x86 vCPU state. Registers not named keep KVM's reset values.

    `regs` uses kvm_regs names (rax .. r15, rip, rflags); `segments` uses cs, ds, es, fs, gs, ss, tr, ldt;
    `control` uses cr0, cr3, cr4, efer; `gdt`/`idt` are (base, limit).
    """

    regs: dict[str, int] = field(default_factory=dict)
    segments: dict[str, SegmentReg] = field(default_factory=dict)
    control: dict[str, int] = field(default_factory=dict)
    gdt: tuple[int, int] | None = None
    idt: tuple[int, int] | None = None


@dataclass(frozen=True)
class Segment:
    """Bytes placed at a guest physical address."""

    gpa: int
    data: bytes


@dataclass(frozen=True)
class GuestImage:
    """Memory contents and CPU state for a guest. `ap` is None when application processors start by INIT/SIPI."""

    segments: tuple[Segment, ...]
    bsp: CpuState
    ap: CpuState | None = None
    description: str = ""
    # A register the runner sets to each vCPU's index (0 = boot vCPU) before it starts, or "" for none.
    vcpu_index_reg: str = ""
