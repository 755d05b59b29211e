"""Guest RAM's file (agent/kvm/ramfile.py) on this host: huge pages on a private tmpfs when privileged, else a memfd,
and reachable through /proc/PID/fd/FD either way (what snapshots and migration rely on)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kvmplat.agent.kvm import ramfile
from kvmplat.agent.kvm.fds import GuestMemory, Kvm

pytestmark = pytest.mark.kvm
MIB = 1 << 20
SHMEM_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")


def _privileged() -> bool:
    return os.geteuid() == 0 and SHMEM_ENABLED.exists() and "[deny]" not in SHMEM_ENABLED.read_text()


def _smaps_field(addr: int, name: str) -> int:
    """A field (kB) of this process's mapping that starts at `addr`."""
    block = Path("/proc/self/smaps").read_text().split(f"{addr:x}-", 1)[1]
    line = next(ln for ln in block.splitlines() if ln.startswith(f"{name}:"))
    return int(line.split()[1])


@pytest.mark.skipif(not _privileged(), reason="needs root (CAP_SYS_ADMIN) and THP for a private tmpfs")
def test_guest_ram_gets_huge_pages_on_a_private_tmpfs() -> None:
    mem = GuestMemory(16 * MIB)
    try:
        assert mem.backing == ramfile.HUGE
        assert mem.host_addr % (2 * MIB) == 0  # aligned, so KVM can map 2 MiB at a time
        mem.write(0, b"\x90" * (4 * MIB))
        assert _smaps_field(mem.host_addr, "ShmemPmdMapped") >= 4096
        assert not any("kvmplat" in m for m in Path("/proc/self/mountinfo").read_text().splitlines())
    finally:
        mem.close()


def test_guest_ram_reopens_through_proc_like_a_memfd() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm:
        mem = vm.add_memory(8 * MIB)
        mem.write(3 * MIB, b"kvmplat")
        fd = os.open(f"/proc/self/fd/{mem.fd}", os.O_RDONLY)
        try:
            assert os.fstat(fd).st_size == 8 * MIB
            assert os.pread(fd, 7, 3 * MIB) == b"kvmplat"
            assert os.lseek(fd, 0, os.SEEK_DATA) <= 3 * MIB  # the extents snapshots use to skip untouched memory
        finally:
            os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_without_cap_sys_admin_guest_ram_is_a_memfd() -> None:
    code = (
        "from kvmplat.agent.kvm.ramfile import ram_file; fd, how = ram_file(4 << 20); print(how, os.fstat(fd).st_size)"
    )
    out = subprocess.run(
        ["setpriv", "--bounding-set=-sys_admin", sys.executable, "-c", f"import os; {code}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out == [ramfile.MEMFD, str(4 << 20)]
