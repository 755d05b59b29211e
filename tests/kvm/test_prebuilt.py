"""A spare's machine built ahead (agent/runner/prebuilt.py), on real KVM: taken only by a config that builds the same
machine (whatever its name, socket and event numbering), and never once a boot file changed."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from kvmplat.agent.runner.prebuilt import Prebuilt
from kvmplat.agent.runner.vcpu import install_kick_handler
from kvmplat.agent.runner.vmrunner import VmRunner
from kvmplat.agent.runner.wire import BootSource, RunnerConfig
from linux.linux_fakes import fake_bzimage

pytestmark = pytest.mark.kvm
LOOP = RunnerConfig(name="a", vcpus=1, memory_mib=16, socket="/nonexistent/a.sock", boot=BootSource(builtin="loop"))


def _kernel_config(tmp_path: Path) -> RunnerConfig:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(fake_bzimage())
    boot = BootSource(kernel=str(kernel), cmdline="console=ttyS0")
    return replace(LOOP, memory_mib=64, boot=boot, image_dirs=(str(tmp_path),))


def test_a_config_of_another_vm_with_the_same_shape_takes_the_machine() -> None:
    ahead = Prebuilt.build(LOOP)
    assert ahead is not None
    machine = ahead.take(replace(LOOP, name="b", socket="/nonexistent/b.sock", first_seq=7, restart=True))
    assert machine is ahead.machine
    install_kick_handler()  # as a runner does first: its vCPU threads are ended with this signal
    runner = VmRunner(replace(LOOP, name="b"), machine)
    try:
        assert runner.machine is machine and runner.state.name == "CREATED"
        assert len(runner.machine.vcpus) == 1 and runner.machine.memory.size == 16 << 20
    finally:
        runner.teardown()


@pytest.mark.parametrize(
    "other",
    [
        {"memory_mib": 32},
        {"vcpus": 2},
        {"boot": BootSource(builtin="probe")},
        {"cpuid": ((0, 0, 0, 0xD, 0, 0, 0),)},
        {"incoming": "restore"},
    ],
    ids=["memory", "vcpus", "boot", "cpuid", "incoming"],
)
def test_a_different_config_gets_none_and_the_machine_is_freed(other: dict[str, object]) -> None:
    ahead = Prebuilt.build(LOOP)
    assert ahead is not None
    vm_fd = ahead.machine.vm.fd
    assert ahead.take(replace(LOOP, **other)) is None  # type: ignore[arg-type]
    with pytest.raises(OSError):
        os.fstat(vm_fd)  # closed: the runner builds its own


def test_a_boot_file_changed_since_the_build_is_not_taken(tmp_path: Path) -> None:
    config = _kernel_config(tmp_path)
    ahead = Prebuilt.build(config)
    assert ahead is not None
    assert ahead.take(config) is ahead.machine
    ahead = Prebuilt.build(config)
    assert ahead is not None
    kernel = Path(config.boot.kernel)
    kernel.write_bytes(fake_bzimage() + b"\0")  # same path, another file content: the old machine is not this one
    assert ahead.take(config) is None


def test_nothing_is_built_without_a_hint_for_a_restore_or_from_a_missing_file(tmp_path: Path) -> None:
    assert Prebuilt.build(None) is None
    assert Prebuilt.build(replace(LOOP, incoming="restore")) is None
    missing = replace(LOOP, boot=BootSource(kernel=str(tmp_path / "gone")), image_dirs=(str(tmp_path),))
    assert Prebuilt.build(missing) is None
