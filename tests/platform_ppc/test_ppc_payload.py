"""The ppc64 probe payload: the encoder against known instruction words, and the assembled program's shape."""

from __future__ import annotations

import struct

from kvmplat.lab.ppc import payload as pp


def test_encoder_matches_known_words() -> None:
    """Words of the guest measured in PPC_ON_TCG.md and ISA examples."""
    assert pp.addi(3, 0, 0x1234) == 0x38601234  # li r3,0x1234
    assert pp.addi(4, 0, 0x5678) == 0x38805678  # li r4,0x5678
    assert pp.sc(1) == 0x44000022  # sc 1
    assert pp.addis(5, 0, 0x4000) == 0x3CA04000  # lis r5,0x4000
    assert pp.stw(4, 0, 5) == 0x90850000  # stw r4,0(r5)
    assert pp.b_self() == 0x48000000  # b .
    assert pp.rldicr(3, 3, 32, 31) == 0x786307C6  # sldi r3,r3,32
    assert pp.ori(6, 6, 0xBEEF) == 0x60C6BEEF and pp.oris(6, 6, 0xBEEF) == 0x64C6BEEF
    assert pp.addi(5, 0, -1) == 0x38A0FFFF


def _li64_value(words: list[int]) -> int:
    """Interprets lis/ori/sldi/oris/ori as the CPU would."""
    lis, ori1, _sldi, oris, ori2 = words
    hi = ((lis & 0xFFFF) << 16 | (ori1 & 0xFFFF)) & 0xFFFFFFFF
    return (hi << 32) | ((oris & 0xFFFF) << 16) | (ori2 & 0xFFFF)


def test_li64_loads_any_constant() -> None:
    """lis sign-extends, but sldi 32 drops those bits: the full 64-bit value results."""
    for value in (0, 0x6B766D706C61742D, 0xFFFFFFFFFFFFFFFF, 0x8000000000000001):
        assert _li64_value(pp.li64(6, value)) == value


def test_probe_program_prints_line_then_stores_magic() -> None:
    """Two H_PUT_TERM_CHAR hypercalls carry the line; then stw of the magic to the MMIO address and b ."""
    code = pp.assemble_probe()
    words = [w for (w,) in struct.iter_unpack("<I", code)]
    assert words.count(pp.sc(1)) == 2 and words[-1] == pp.b_self() and words[-2] == pp.stw(4, 0, 5)
    chunk = words[:14]
    assert chunk[0] == pp.addi(3, 0, pp.H_PUT_TERM_CHAR) and chunk[2] == pp.addi(5, 0, 16)
    args = [0, 16, _li64_value(chunk[3:8]), _li64_value(chunk[8:13])]
    assert pp.put_term_chars(args) == pp.PROBE_LINE[:16]
    assert pp.PROBE_LINE.startswith(b"kvmplat-probe")


def test_probe_registers_little_endian_real_mode() -> None:
    """pc = 0x100, msr = SF|ME|LE in a 392-byte ppc kvm_regs."""
    regs = pp.probe_regs()
    assert len(regs) == 392 and struct.unpack_from("<QQ", regs, 0)[0] == 0x100
    assert struct.unpack_from("<Q", regs, 40)[0] == 0x8000000000001001
