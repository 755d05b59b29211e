"""The built-in guest payloads (assembled from payloads.S into the compiled module) as GuestImages.

`probe` prints one `kvmplat-probe` line per vCPU plus the boot vCPU's CPUID leaves, then powers off; `loop` ticks
once a second from the PIT until stopped; `echo` writes back what it reads from the UART (interactive console
tests), but answers `?` with the probe's CPUID lines (the guest's view, asked again after a migration); `outloop`
writes port 0x80 forever (the exit-cost benchmark's guest); `dirty` writes every page above 1 MiB over and over
(the migration benchmark's busy guest).
All run in 16-bit real mode from guest physical 0x1000.
"""

from __future__ import annotations

from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.guest.image import CpuState, GuestImage, Segment, SegmentReg
from kvmplat.agent.kvm._kvmc import ffi, lib

__all__ = ["BUILTINS", "LOAD_ADDR", "builtin_image"]

LOAD_ADDR = 0x1000
PARAMS_ADDR = 0x500
BUILTINS = {
    "probe": lib.kp_entry_probe,
    "loop": lib.kp_entry_loop,
    "echo": lib.kp_entry_echo,
    "outloop": lib.kp_entry_outloop,
    "dirty": lib.kp_entry_dirty,
}
PUBLIC_BUILTINS = ("probe", "loop", "echo", "dirty")
_REAL_MODE_SEGMENTS = {name: SegmentReg() for name in ("ds", "es", "fs", "gs", "ss")} | {
    "cs": SegmentReg(type=0xB)  # code, execute/read, accessed
}


def blob() -> bytes:
    """The assembled payload blob, loaded whole at LOAD_ADDR."""
    return bytes(ffi.buffer(lib.kp_payload_blob, lib.kp_payload_blob_size))


_UNREAL_DATA = SegmentReg(limit=0xFFFFFFFF, g=1)  # real mode with a 4 GiB data segment ("unreal mode")


def builtin_image(name: str, vcpus: int, memory_size: int = 0) -> GuestImage:
    """The GuestImage of built-in payload `name` for `vcpus` vCPUs."""
    if name not in BUILTINS:
        known = ", ".join(PUBLIC_BUILTINS)
        raise InvalidArgument.field("spec.boot.builtin", f"unknown built-in payload {name!r} (known: {known})")
    if not 1 <= vcpus <= 255:
        raise InvalidArgument.field("spec.vcpus", "built-in payloads run on 1 to 255 vCPUs")
    segments = _REAL_MODE_SEGMENTS | ({"ds": _UNREAL_DATA} if name == "dirty" else {})
    state = CpuState(regs={"rip": LOAD_ADDR + BUILTINS[name], "rflags": 0x2}, segments=segments)
    params = bytes([vcpus]) + bytes(7) + min(memory_size, 0xFFFFF000).to_bytes(4, "little")
    return GuestImage(
        segments=(Segment(LOAD_ADDR, blob()), Segment(PARAMS_ADDR, params)),
        bsp=state,
        ap=state,
        description=f"built-in {name}",
        vcpu_index_reg="rbx",
    )
