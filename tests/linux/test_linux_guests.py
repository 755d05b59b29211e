"""How a Linux guest's end reaches the user, with tiny ELF "kernels" booted by the Linux loader under a real agent
(real KVM, no mocks): poweroff, i8042 reset and triple fault end STOPPED; a panic and an emulation failure end
CRASHED with the evidence; unknown ports and MMIO are counted, not fatal; an SMP guest's MP table lists every vCPU;
boot milestones land in the VM's stats."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from guest_harness import CMPXCHG16B, HANG, POWEROFF, RESET, UNKNOWN_PORTS, Agent, print_then
from kvmplat.agent.runner.panic import PANIC_GRACE_S
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.kvm, pytest.mark.e2e]

Kernel = Callable[[bytes], str]
END_S = 60.0  # each guest runs a few dozen instructions; the bound only keeps a broken runner from hanging the test
UD2 = bytes.fromhex("0f0b")  # #UD with an empty IDT: #DF, then a triple fault
MMIO_AT = 0xD000_0000  # identity-mapped by the loader's page tables, beyond the guest's RAM: no device there
MMIO_WRITE_READ = b"\xa2" + MMIO_AT.to_bytes(8, "little") + b"\xa0" + MMIO_AT.to_bytes(8, "little")
# Counts the processor entries of the MP table (floating pointer at 0x9fc00) and prints "cpus=N", then powers off
# (assembled from: walk the config table's entries, 20 bytes for type 0, 8 for the others; '0'+count into a string).
SMP_COUNT = bytes.fromhex(
    "bb00fc09008b5b040fb74b22488d732c31ff85c97415803e007508ffc74883c614eb044883c608ffc9ebe7"
    "83c73048c1e72848b8637075733d000a004809f866baf803ee48c1e80875f9e6f4f4"
)


def _run(agent: Agent, name: str, path: str, vcpus: int = 1) -> pb.Vm:
    agent.boot(name, path, vcpus=vcpus)
    return agent.wait_end(name, END_S + PANIC_GRACE_S)


def test_poweroff_is_stopped_guest_poweroff(guest_agent: Agent, kernel: Kernel) -> None:
    vm = _run(guest_agent, "off", kernel(print_then("hello from a tiny kernel\n", POWEROFF)))
    assert (vm.state, vm.state_reason) == (pb.STOPPED, "guest poweroff")
    assert guest_agent.console("off") == "hello from a tiny kernel\n"
    assert guest_agent.exit_event("off").reason == "guest poweroff"


def test_i8042_reset_is_stopped_guest_reset(guest_agent: Agent, kernel: Kernel) -> None:
    vm = _run(guest_agent, "kbdreset", kernel(print_then("rebooting\n", RESET)))
    assert (vm.state, vm.state_reason) == (pb.STOPPED, "guest reset")
    assert "i8042" in guest_agent.exit_event("kbdreset").detail


def test_triple_fault_is_stopped_guest_reset(guest_agent: Agent, kernel: Kernel) -> None:
    vm = _run(guest_agent, "triple", kernel(UD2))
    assert (vm.state, vm.state_reason) == (pb.STOPPED, "guest reset")
    summary = guest_agent.exit_event("triple")
    assert "triple fault" in summary.detail and summary.reason == "guest reset"


def test_panic_then_hang_is_crashed_with_last_lines(guest_agent: Agent, kernel: Kernel) -> None:
    text = "mounting root\nKernel panic - not syncing: VFS: Unable to mount root fs\n"
    vm = _run(guest_agent, "panic", kernel(print_then(text, HANG)))  # no panic=-1: it spins, the runner ends it
    assert vm.state == pb.CRASHED
    assert vm.state_reason == "kernel panic: Kernel panic - not syncing: VFS: Unable to mount root fs"
    detail = guest_agent.exit_event("panic").detail
    assert "last console lines:\nmounting root\nKernel panic" in detail


def test_reset_after_panic_is_a_crash_not_a_reset(guest_agent: Agent, kernel: Kernel) -> None:
    vm = _run(guest_agent, "panicreset", kernel(print_then("Kernel panic - not syncing: oops\n", RESET)))
    assert (vm.state, vm.state_reason) == (pb.CRASHED, "kernel panic: Kernel panic - not syncing: oops")


def test_emulation_failure_is_crashed_with_bytes_and_reason(guest_agent: Agent, kernel: Kernel) -> None:
    """cmpxchg16b: kvm_pvm's emulator lacks it; hardware KVM runs it, then the guest powers off."""
    vm = _run(guest_agent, "emul", kernel(CMPXCHG16B + POWEROFF))
    if vm.state == pb.STOPPED:  # hardware KVM: the instruction ran natively
        assert vm.state_reason == "guest poweroff"
        return
    assert vm.state == pb.CRASHED
    summary = guest_agent.exit_event("emul")
    assert summary.instruction[:4] == CMPXCHG16B and summary.reason == "crash"
    assert "48 0f c7 0e" in vm.state_reason and "cmpxchg16b" in vm.state_reason
    assert "emulator does not implement it" in vm.state_reason
    assert summary.registers["rip"] == 0x100000


def test_unknown_ports_and_mmio_are_counted_not_fatal(guest_agent: Agent, kernel: Kernel) -> None:
    vm = _run(guest_agent, "unknown", kernel(UNKNOWN_PORTS + UNKNOWN_PORTS + MMIO_WRITE_READ + POWEROFF))
    assert (vm.state, vm.state_reason) == (pb.STOPPED, "guest poweroff")
    assert vm.stats.unhandled_pio == 4  # two reads and two writes of port 0x99
    assert vm.stats.unhandled_mmio == 2


@pytest.mark.parametrize("vcpus", [1, 3])
def test_smp_guest_sees_every_vcpu(guest_agent: Agent, kernel: Kernel, vcpus: int) -> None:
    vm = _run(guest_agent, f"smp{vcpus}", kernel(SMP_COUNT), vcpus=vcpus)
    assert vm.state == pb.STOPPED
    assert guest_agent.console(f"smp{vcpus}") == f"cpus={vcpus}\n"


def test_milestones_in_stats(guest_agent: Agent, kernel: Kernel) -> None:
    vm = _run(guest_agent, "banner", kernel(print_then("Linux version 0.0 (tiny)\nKVMPLAT-INIT\n", POWEROFF)))
    s = vm.stats
    for field in ("started", "first_console_byte", "linux_banner", "kvmplat_init"):
        assert s.HasField(field), field
    started, first = s.started.ToNanoseconds(), s.first_console_byte.ToNanoseconds()
    assert started <= first <= s.linux_banner.ToNanoseconds() <= s.kvmplat_init.ToNanoseconds()


def test_silent_guest_has_no_console_milestones(guest_agent: Agent, kernel: Kernel) -> None:
    vm = _run(guest_agent, "silent", kernel(POWEROFF))
    assert vm.stats.HasField("started")
    assert not vm.stats.HasField("first_console_byte") and not vm.stats.HasField("linux_banner")
