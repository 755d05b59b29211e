"""The built-in ppc64 probe payload (issue 8 item 4), hand-assembled by a small tested encoder, and its runner.

The guest is little-endian (MSR[LE]), like the ppc64le hosts kvmplat targets and the guest measured in
PPC_ON_TCG.md, so instruction words are stored little-endian. It starts at 0x100 in real mode (MSR = SF|ME|LE,
IR/DR off: no MMU setup needed under HV or PR) and:
  1. prints "kvmplat-probe ppc64le\n" with `sc 1` H_PUT_TERM_CHAR (0x58) hypercalls, 16 bytes each (r4 = term 0,
     r5 = length, r6/r7 = the bytes packed big-endian, as Linux's hvc_put_chars does) → KVM_EXIT_PAPR_HCALL on HV;
  2. stores PROBE_MAGIC to PROBE_MMIO (unbacked) → KVM_EXIT_MMIO, the signal on PR, where QEMU's TCG answers a PR
     guest's `sc 1` itself (H_PRIVILEGE) so no hypercall exit is seen;
  3. spins (`b .`).
The bare-metal probes (issue 13 item 3, abi BARE_METAL: no KVM_CAP_PPC_PAPR, no hypervisor to call) only store:
  ppc64  `assemble_bare64`: big-endian (arch PPC64), MSR = SF|ME, PROBE_MAGIC to PROBE_MMIO;
  ppc32  lab/ppc/probe32.S, assembled by the lab with the cross binutils: big-endian, MSR = ME (SF clear), the
         magic to PROBE_MMIO and then to the effective address `lis 0x8000`, which only 32-bit mode truncates to
         PROBE32_EA (64-bit mode would sign-extend it).
`run_bare` runs either and reports each MMIO store and the MSR the vCPU ends with.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "H_PUT_TERM_CHAR",
    "PROBE_ENTRY",
    "PROBE_LINE",
    "PROBE_MAGIC",
    "PROBE_MMIO",
    "PROBE_MSR",
    "BareOutcome",
    "ProbeOutcome",
    "assemble_bare64",
    "assemble_probe",
    "probe_regs",
    "put_term_chars",
    "run_bare",
    "run_probe",
]

H_PUT_TERM_CHAR = 0x58
H_SUCCESS = 0
PROBE_ENTRY = 0x100
PROBE_MMIO = 0x40000000
PROBE_MAGIC = 0x6B706C74  # "kplt"
PROBE_LINE = b"kvmplat-probe ppc64le\n"
MSR_SF, MSR_ME, MSR_LE = 1 << 63, 1 << 12, 1 << 0
PROBE_MSR = MSR_SF | MSR_ME | MSR_LE
BARE64_MSR = MSR_SF | MSR_ME  # big-endian 64-bit, real mode
BARE32_MSR = MSR_ME  # 32-bit (SF clear), big-endian, real mode
PROBE32_EA = 0x80000000  # `lis 5,0x8000` as an address in 32-bit mode
GUEST_RAM = 16 << 20
EXIT_MMIO, EXIT_PAPR_HCALL = 6, 19


def _d_form(opcode: int, rt: int, ra: int, imm: int) -> int:
    return (opcode << 26) | (rt << 21) | (ra << 16) | (imm & 0xFFFF)


def addi(rt: int, ra: int, imm: int) -> int:
    """addi rt,ra,imm (li when ra = 0)."""
    return _d_form(14, rt, ra, imm)


def addis(rt: int, ra: int, imm: int) -> int:
    """addis rt,ra,imm (lis when ra = 0)."""
    return _d_form(15, rt, ra, imm)


def ori(ra: int, rs: int, imm: int) -> int:
    """ori ra,rs,imm."""
    return _d_form(24, rs, ra, imm)


def oris(ra: int, rs: int, imm: int) -> int:
    """oris ra,rs,imm."""
    return _d_form(25, rs, ra, imm)


def stw(rs: int, disp: int, ra: int) -> int:
    """stw rs,disp(ra)."""
    return _d_form(36, rs, ra, disp)


def rldicr(ra: int, rs: int, sh: int, me: int) -> int:
    """rldicr ra,rs,sh,me (MD-form; sldi ra,rs,n = rldicr ra,rs,n,63-n)."""
    me_field = ((me & 0x1F) << 1) | (me >> 5)
    return (30 << 26) | (rs << 21) | (ra << 16) | ((sh & 0x1F) << 11) | (me_field << 5) | (1 << 2) | ((sh >> 5) << 1)


def sc(lev: int) -> int:
    """sc lev (1: hypervisor call)."""
    return 0x44000002 | (lev << 5)


def b_self() -> int:
    """b . (branch to itself)."""
    return 0x48000000


def li64(rt: int, value: int) -> list[int]:
    """Loads a 64-bit constant: lis, ori, sldi 32, oris, ori."""
    hi, lo = value >> 32, value & 0xFFFFFFFF
    return [
        addis(rt, 0, hi >> 16),
        ori(rt, rt, hi & 0xFFFF),
        rldicr(rt, rt, 32, 31),
        oris(rt, rt, lo >> 16),
        ori(rt, rt, lo & 0xFFFF),
    ]


def _put_term_char(chunk: bytes) -> list[int]:
    padded = chunk.ljust(16, b"\0")
    r6, r7 = struct.unpack(">QQ", padded)
    return [addi(3, 0, H_PUT_TERM_CHAR), addi(4, 0, 0), addi(5, 0, len(chunk)), *li64(6, r6), *li64(7, r7), sc(1)]


def assemble_probe(line: bytes = PROBE_LINE) -> bytes:
    """The payload's bytes (little-endian words), loaded at PROBE_ENTRY."""
    words: list[int] = []
    for i in range(0, len(line), 16):
        words += _put_term_char(line[i : i + 16])
    words += [addis(5, 0, PROBE_MMIO >> 16), *li64(4, PROBE_MAGIC), stw(4, 0, 5), b_self()]
    return b"".join(struct.pack("<I", w) for w in words)


def assemble_bare64() -> bytes:
    """The bare-metal ppc64 probe (big-endian words): PROBE_MAGIC to PROBE_MMIO, then `b .`; no hypercalls."""
    words = [addis(5, 0, PROBE_MMIO >> 16), *li64(4, PROBE_MAGIC), stw(4, 0, 5), b_self()]
    return b"".join(struct.pack(">I", w) for w in words)


def probe_regs(msr: int = PROBE_MSR) -> bytes:
    """struct kvm_regs (ppc, 392 bytes, little-endian host) with pc = PROBE_ENTRY and `msr`."""
    regs = bytearray(392)
    struct.pack_into("<Q", regs, 0, PROBE_ENTRY)  # pc
    struct.pack_into("<Q", regs, 40, msr)  # msr
    return bytes(regs)


def put_term_chars(args: list[int]) -> bytes:
    """The bytes an H_PUT_TERM_CHAR hypercall prints, from its args (term, length, two big-endian words)."""
    length = min(max(args[1], 0), 16)
    return struct.pack(">QQ", args[2] & (2**64 - 1), args[3] & (2**64 - 1))[:length]


@dataclass
class ProbeOutcome:
    """What the probe did: console bytes, hypercall numbers seen, the MMIO store (addr, data) and the last exit."""

    console: bytes = b""
    hcalls: list[int] = field(default_factory=list)
    mmio: tuple[int, int] | None = None
    last_exit: int = -1


def run_probe(vm: Any, vcpu: Any, max_exits: int = 64) -> ProbeOutcome:
    """Loads the payload into `vm` (a kvm.Vm), sets `vcpu`'s registers and runs it to its MMIO store."""
    mem = vm.add_memory(GUEST_RAM, 0)
    mem.write(PROBE_ENTRY, assemble_probe())
    vcpu.set_regs_bytes(probe_regs())
    out = ProbeOutcome()
    for _ in range(max_exits):
        out.last_exit = int(vcpu.run())
        run = vcpu.run_struct
        if out.last_exit == EXIT_PAPR_HCALL:
            call = run.papr_hcall
            out.hcalls.append(int(call.nr))
            if call.nr == H_PUT_TERM_CHAR:
                out.console += put_term_chars([int(call.args[i]) for i in range(4)])
            call.ret = H_SUCCESS
            continue
        if out.last_exit == EXIT_MMIO and run.mmio.is_write:
            out.mmio = (int(run.mmio.phys_addr), int.from_bytes(bytes(run.mmio.data)[: run.mmio.len], "little"))
        break
    return out


@dataclass
class BareOutcome:
    """What a bare-metal probe did: its MMIO stores (address, value in the guest's byte order), the MSR it ended
    with, and the last exit reason."""

    stores: list[tuple[int, int]] = field(default_factory=list)
    msr: int = -1
    last_exit: int = -1


def run_bare(vm: Any, vcpu: Any, blob: bytes, msr: int, pvr: int = 0, stores: int = 1) -> BareOutcome:
    """Runs a bare-metal probe (no PAPR) from PROBE_ENTRY with `msr` (and the sregs PVR `pvr` when set) until it
    made `stores` MMIO stores or exits otherwise."""
    mem = vm.add_memory(GUEST_RAM, 0)
    mem.write(PROBE_ENTRY, blob)
    if pvr:
        sregs = bytearray(vcpu.get_sregs_bytes())
        struct.pack_into("<I", sregs, 0, pvr)  # kvm_sregs.pvr
        vcpu.set_sregs_bytes(bytes(sregs))
    vcpu.set_regs_bytes(probe_regs(msr))
    order = "little" if msr & MSR_LE else "big"
    out = BareOutcome()
    for _ in range(8):
        out.last_exit = int(vcpu.run())
        run = vcpu.run_struct
        if out.last_exit != EXIT_MMIO or not run.mmio.is_write:
            break
        data = bytes(run.mmio.data)[: run.mmio.len]
        out.stores.append((int(run.mmio.phys_addr), int.from_bytes(data, order)))  # type: ignore[arg-type]
        if len(out.stores) >= stores:
            break
    out.msr = struct.unpack_from("<Q", vcpu.get_regs_bytes(), 40)[0]  # kvm_regs.msr
    return out
