"""The file behind guest RAM: on a private tmpfs with transparent huge pages where the host allows it, else a memfd.

KVM maps guest memory into the guest's nested page tables at the size the host maps it: 4 KiB pages cost one
nested page fault (an exit) per page the guest first touches, 2 MiB pages one per 2 MiB. QEMU's guest RAM is
anonymous memory with MADV_HUGEPAGE, so THP backs it; a memfd is shmem, whose THP is governed by
/sys/kernel/mm/transparent_hugepage/shmem_enabled, "never" by default (Debian's too). Measured in the x86 lab (README
"x86 lab"): a Linux boot to /init took ~27,700 nested page faults with a memfd and ~850 for QEMU's guest.

So guest RAM is an unnamed file (O_TMPFILE) on a tmpfs instance of its own, mounted with `huge=within_size` and never
attached to any path (fsopen/fsmount, Linux 5.2+): no mount is visible, nothing is left behind, and the file is
reached exactly like a memfd (the agent opens /proc/PID/fd/FD). That needs CAP_SYS_ADMIN; without it, or on a host
without THP, it is a memfd as before, advised MADV_HUGEPAGE by the mapping (effective where shmem_enabled allows).

The tmpfs is made once per process and kept: the runner template makes it (`prepare`) before it forks runners, so
every VM's file is one O_TMPFILE on the mount its runner inherited. A tmpfs made and torn down per VM cost each
CreateVm about 3 ms of CPU (bench/load.py's runners: 14.7 ms per lifecycle against 11).
"""

from __future__ import annotations

import contextlib
import ctypes
import os

__all__ = ["HUGE", "MEMFD", "prepare", "ram_file"]

HUGE = "tmpfs huge=within_size"
MEMFD = "memfd"
# syscall numbers of the new mount API: the same on every architecture (asm-generic unified numbering)
SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 430, 431, 432
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 1, 6
MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 0x2, 0x4, 0x8
TMPFS_OPTIONS = (("huge", "within_size"), ("nr_blocks", "0"))  # nr_blocks=0: no size limit (a memfd has none)

_libc = ctypes.CDLL(None, use_errno=True)
_mount: int | None = None  # the huge tmpfs `prepare` made for this process and its forks (-1: the host said no)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _huge_tmpfs() -> int:
    """A detached tmpfs mount (its fd) whose files get transparent huge pages; OSError when the host says no."""
    fs = _check(_libc.syscall(SYS_FSOPEN, b"tmpfs", FSOPEN_CLOEXEC), "fsopen")
    try:
        for key, value in TMPFS_OPTIONS:
            _check(_libc.syscall(SYS_FSCONFIG, fs, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0), key)
        _check(_libc.syscall(SYS_FSCONFIG, fs, FSCONFIG_CMD_CREATE, None, None, 0), "fsconfig create")
        attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC
        return _check(_libc.syscall(SYS_FSMOUNT, fs, FSMOUNT_CLOEXEC, attrs), "fsmount")
    finally:
        os.close(fs)


def prepare() -> int:
    """Makes the huge tmpfs this process (the runner template) and its forks keep for guest RAM; its fd, or -1 when
    the host refuses it."""
    global _mount
    if _mount is None:
        try:
            _mount = _huge_tmpfs()
        except OSError:
            _mount = -1
    return _mount


def ram_file(size: int) -> tuple[int, str]:
    """(fd, backing) of a new zero-filled file of `size` bytes for guest RAM; backing is HUGE or MEMFD. On the
    prepared tmpfs, else on one made for this file alone (which goes when the file does)."""
    fd, backing = -1, HUGE
    with contextlib.suppress(OSError):
        if os.environ.get("KVMPLAT_GUEST_RAM") == MEMFD or _mount == -1:
            raise OSError("a memfd asked for, or the host refused the tmpfs")
        mnt = _mount if _mount is not None else _huge_tmpfs()
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=mnt)
        finally:
            if mnt != _mount:
                os.close(mnt)
    if fd < 0:
        fd, backing = os.memfd_create("kvmplat-guest", os.MFD_CLOEXEC), MEMFD
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd, backing
