"""client/cli/linux_demo.py without a guest: what it says about how a Linux guest ended (the boot itself is what
test_linux_debian.py checks, and `kvmplat demo --linux` shows)."""

from __future__ import annotations

from kvmplat.client.cli import linux_demo
from kvmplat.v1 import agent_pb2 as pb

EMULATION = "KVM internal error: the instruction emulator could not run an instruction: the instruction at rip 0x1"


def test_emulation_failure_is_explained_with_the_host() -> None:
    text = linux_demo._why(pb.Vm(state=pb.CRASHED, state_reason=EMULATION), hardware=False)
    assert text.startswith(f"why it stops here: {EMULATION}") and "kvm_pvm" in text and "hardware KVM" in text


def test_reset_after_init_on_hardware_kvm() -> None:
    text = linux_demo._why(pb.Vm(state=pb.STOPPED, state_reason="guest reset"), hardware=True)
    assert "/init" in text and "rebooted" in text


def test_anything_else_is_named_as_is() -> None:
    text = linux_demo._why(pb.Vm(state=pb.CRASHED, state_reason="kernel panic: x"), hardware=True)
    assert text == "the guest ended CRASHED: kernel panic: x"


def test_hardware_kvm_reads_cpuinfo() -> None:
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    assert linux_demo.hardware_kvm() == (" vmx" in flags or " svm" in flags)
