"""For the Linux guest tests: tiny 64-bit "kernels" (ELF files the Linux loader boots, each a few instructions) and
a real kvmplat-agent whose image directories hold them and the Debian image."""

from __future__ import annotations

import contextlib
import re
import struct
import time
from pathlib import Path

from kvmplat.client.localagent import LocalAgent
from kvmplat.v1 import agent_pb2 as pb

LOAD = 0x100000  # physical and virtual: the loader's page tables map the first 4 GiB one to one
ENDED = (pb.STOPPED, pb.CRASHED)

# Guest code, entered in 64-bit mode with rsi -> boot_params (RAM, 16-byte aligned).
CMPXCHG16B = bytes.fromhex("480fc70e")  # cmpxchg16b (%rsi): kvm_pvm's emulator lacks it
POWEROFF = bytes.fromhex("e6f4f4")  # out %al, $0xf4 (kvmplat's exit port); hlt
RESET = bytes.fromhex("b0fee664f4")  # mov $0xfe, %al; out %al, $0x64 (i8042 reset line); hlt
HANG = bytes.fromhex("faf4ebfd")  # cli; hlt; jmp back to the hlt: sleeps for good
UNKNOWN_PORTS = bytes.fromhex("e499e699")  # in $0x99, %al; out %al, $0x99: no device there


def print_then(text: str, tail: bytes) -> bytes:
    """Code that writes `text` to COM1 byte by byte, then runs `tail`."""
    head_len, loop_len = 11, 8  # lea msg(%rip),%rsi; mov $0x3f8,%dx | lodsb; test; jz; out; jmp
    msg_off = head_len + loop_len + len(tail)
    code = b"\x48\x8d\x35" + struct.pack("<i", msg_off - 7) + bytes.fromhex("66baf803")
    code += bytes.fromhex("ac84c07403eeebf8")
    return code + tail + text.encode() + b"\0"


def tiny_elf(code: bytes) -> bytes:
    """An x86-64 ET_EXEC vmlinux stand-in: one PT_LOAD of `code` at LOAD, entered at its first byte."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, LOAD, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, LOAD, LOAD, len(code), len(code), 0x1000)
    return (ehdr + phdr).ljust(0x1000, b"\0") + code


class Agent:
    """A kvmplat-agent on a private socket, allowed to boot kernels from `image_dirs`."""

    def __init__(self, tmp: Path, image_dirs: list[str]) -> None:
        # timeout: a bound, not a speed check (inside the x86 lab's TCG the agent's start-up takes ~25 s)
        self.local = LocalAgent.start(tmp, [f for d in image_dirs for f in ("--image-dir", d)], timeout=90.0)
        self.address, self.log, self.proc, self.client = (
            self.local.address,
            self.local.log_path,
            self.local.proc,
            self.local.client,
        )

    def boot(
        self, name: str, kernel: str, cmdline: str = "", initrd: str = "", pv: tuple[int, ...] = (pb.KVM,), **spec: int
    ) -> None:
        """Creates and starts a Linux guest (1 vCPU, 16 MiB and the KVM pv interface unless told otherwise)."""
        boot = pb.BootSpec(kernel=kernel, initrd=initrd, cmdline=cmdline)
        vm = pb.VmSpec(name=name, vcpus=spec.get("vcpus", 1), memory_mib=spec.get("memory_mib", 16), boot=boot)
        vm.platform.abi = pb.BARE_METAL
        vm.platform.pv.extend(pv)
        self.client.create_vm(vm, start=True)

    def events(self, name: str) -> list[pb.Event]:
        """Every event of `name` so far."""
        return list(self.client.watch_events(vm=name, follow=False))

    def console(self, name: str) -> str:
        """The console text so far."""
        return "".join(e.console.text for e in self.events(name) if e.WhichOneof("kind") == "console")

    def wait_end(self, name: str, timeout: float) -> pb.Vm:
        """The VM once it is STOPPED or CRASHED; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (vm := self.client.get_vm(name)).state not in ENDED:
            assert time.monotonic() < deadline, f"{name} still {pb.VmState.Name(vm.state)} after {timeout} s"
            time.sleep(0.05)
        return vm

    def wait_text(self, name: str, pattern: str, timeout: float) -> float:
        """Seconds until the console matches `pattern`; fails on timeout or if the VM ends first."""
        t0 = time.monotonic()
        while not re.search(pattern, self.console(name)):
            vm = self.client.get_vm(name)
            assert vm.state not in ENDED, f"{name} ended ({vm.state_reason}) before {pattern!r}: {self.console(name)}"
            assert time.monotonic() - t0 < timeout, f"no {pattern!r} within {timeout} s: {self.console(name)[-800:]}"
            time.sleep(0.2)
        return time.monotonic() - t0

    def exit_event(self, name: str) -> pb.ExitSummary:
        """The VM's exit summary."""
        exits = [e.exit for e in self.events(name) if e.WhichOneof("kind") == "exit"]
        assert exits, f"{name} has no exit event"
        return exits[-1]

    def discard(self, name: str) -> None:
        """Stops (if needed) and destroys a VM."""
        with contextlib.suppress(Exception):
            self.client.stop_vm(name)
        with contextlib.suppress(Exception):
            self.client.destroy_vm(name)

    def close(self) -> None:
        """Destroys every VM and stops the agent."""
        self.local.stop()
