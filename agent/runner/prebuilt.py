"""A spare runner's machine, built before its VM is asked for.

The template tells each new spare the config of the last VM it started (most VMs of a host share a flavour); the
spare builds that machine (KVM objects, guest memory with its boot image, vCPUs with their CPUID table and
registers; nothing runs) while no CreateVm waits. When the config it is then handed would build the same machine,
the runner takes it as it is; otherwise the machine is freed and the runner builds its own, as it would have anyway.

"The same machine": equal vCPU count, memory size, boot source, CPUID rows and image directories, and each boot
file still the file that was read (device, inode, size and modification time, as before and after the build). A
restore or an incoming migration never takes one (its machine is built empty, for state that arrives later).
"""

from __future__ import annotations

import contextlib
import os

from kvmplat.agent.runner.machine import Machine, build_machine
from kvmplat.agent.runner.wire import RunnerConfig

__all__ = ["Prebuilt"]

FileId = tuple[int, int, int, int] | None


def _files(config: RunnerConfig) -> tuple[FileId, ...]:
    """The identity of each boot file (None where it cannot be read: then nothing is prebuilt)."""
    out: list[FileId] = []
    for path in (config.boot.kernel, config.boot.initrd):
        if not path:
            continue
        try:
            st = os.stat(path)
        except OSError:
            return (None,)
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class Prebuilt:
    """A machine built from a hint config, waiting for a config that would build the same."""

    def __init__(self, shape: RunnerConfig, files: tuple[FileId, ...], machine: Machine) -> None:
        self.shape, self.files, self.machine = shape, files, machine

    @classmethod
    def build(cls, hint: RunnerConfig | None) -> Prebuilt | None:
        """The machine of `hint`, or None (no hint, a restore's, an unreadable boot file, or a build that failed:
        the runner then builds its own and reports what stops it)."""
        if hint is None or hint.incoming:
            return None
        files = _files(hint)
        if None in files:
            return None
        try:
            machine = build_machine(hint)
        except Exception:  # the real config's own build says why, to the caller who asked for it
            return None
        if _files(hint) != files:  # a boot file changed while it was read
            machine.close()
            return None
        return cls(hint.shape(), files, machine)

    def take(self, config: RunnerConfig) -> Machine | None:
        """The machine when `config` builds the same one; else None, and the machine is freed."""
        if not config.incoming and config.shape() == self.shape and _files(config) == self.files:
            return self.machine
        self.close()
        return None

    def close(self) -> None:
        """Frees the machine."""
        with contextlib.suppress(OSError):
            self.machine.close()
