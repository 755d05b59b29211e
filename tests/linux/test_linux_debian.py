"""Debian's real kernel under the agent, observed through events (the image is built on first use, in CI too).

On this kind of host (kvm_pvm: every guest instruction emulated, reference/THIS_HOST.md) the bzImage reaches the
decompressor's first console line in seconds and the ELF vmlinux the "Linux version" banner in about half a minute;
the kernel then stops at the first instruction KVM's emulator lacks, which must end the VM CRASHED with that reason,
never leave it hanging. Where the host has hardware KVM (vmx or svm) the same image boots to its /init, which
reports what the guest sees: test_linux_hardware.py (the x86 lab runs it on kvm-amd).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from guest_harness import Agent
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.kvm, pytest.mark.e2e]

EARLY = "earlyprintk=serial,ttyS0,115200 nokaslr"
FIRST_LINE = r"KASLR disabled|Decompressing|early console"
MEMORY_MIB = 256
# Bounds against a hung runner, not speed checks: on a busy 2-core kvm_pvm host the banner takes 25-60 s and the
# emulation failure comes 50 s later.
FIRST_LINE_S, BANNER_S, END_S = 120.0, 400.0, 600.0


def _cmdline(image: dict[str, str], extra: str = EARLY) -> str:
    return f"{image['cmdline']} {extra}".strip()


def test_bzimage_reaches_the_decompressor_first_line(debian_agent: Agent, debian_image: dict[str, str]) -> None:
    a = debian_agent
    a.boot("bz", debian_image["kernel"], _cmdline(debian_image), debian_image["initrd"], memory_mib=MEMORY_MIB)
    a.wait_text("bz", FIRST_LINE, FIRST_LINE_S)
    vm = a.client.get_vm("bz")
    assert vm.stats.HasField("first_console_byte") and vm.stats.console_bytes > 0
    assert vm.stats.first_console_byte.ToNanoseconds() >= vm.stats.started.ToNanoseconds()
    if vm.state == pb.RUNNING:  # decompressing (minutes when emulated): stop it, it must end at once
        a.client.stop_vm("bz")
    vm = a.wait_end("bz", 30.0)
    assert vm.state in (pb.STOPPED, pb.CRASHED), vm.state_reason
    a.discard("bz")


def test_vmlinux_reaches_the_banner_moves_mid_boot_then_ends(
    debian_agent: Agent, debian_image: dict[str, str], tmp_path: Path
) -> None:
    """The banner, then a live migration mid-boot: the kernel keeps printing on the target and ends there."""
    home = debian_agent
    home.boot("elf", debian_image["vmlinux"], _cmdline(debian_image), debian_image["initrd"], memory_mib=MEMORY_MIB)
    home.wait_text("elf", r"Linux version \d", BANNER_S)
    assert home.client.get_vm("elf").stats.HasField("linux_banner")
    a = Agent(tmp_path, sorted({str(Path(debian_image[k]).resolve().parent) for k in ("vmlinux", "initrd")}))
    try:
        _move_mid_boot(home, a)
    finally:
        a.close()


def _move_mid_boot(home: Agent, a: Agent) -> None:
    assert list(home.client.migrate_vm("elf", a.address))[-1].phase == "done"
    a.wait_text("elf", r"\S", BANNER_S)  # console lines printed after the move, on the target
    assert not re.search(r"Linux version \d", a.console("elf"))  # it went on, it did not boot again
    vm = a.wait_end("elf", END_S)
    if vm.state == pb.CRASHED:  # kvm_pvm: the emulator's missing instruction, named with its bytes
        summary = a.exit_event("elf")
        assert "instruction emulator" in vm.state_reason and "emulator does not implement it" in vm.state_reason
        assert summary.instruction and summary.instruction.hex(" ") in vm.state_reason
    else:  # hardware KVM: /init ran and rebooted (reboot=t makes that a triple fault)
        assert (vm.state, vm.state_reason) == (pb.STOPPED, "guest reset")
    a.discard("elf")
