"""One agent per state directory and per unix socket.

The state directory is locked (`fcntl.flock` on `agent.lock`, which holds the owner's pid) for the agent's whole
life: a second agent on the same directory would re-adopt the first one's runners and fight it for them. A unix
socket that answers a connect belongs to a live agent (its pid read with SO_PEERCRED): a second agent must not
unlink it. A socket nobody answers is a dead agent's, and is replaced as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct

__all__ = ["LOCK_NAME", "InUse", "StateLock", "check_socket_free"]

LOCK_NAME = "agent.lock"


class InUse(Exception):
    """Another live agent holds the state directory or serves the socket (the agent exits 2)."""


class StateLock:
    """The exclusive lock on a state directory, held until `release()` (or the process ends)."""

    def __init__(self, state_dir: str) -> None:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(state_dir, LOCK_NAME)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(self._fd)
            self.release()
            who = f"kvmplat-agent pid {owner}" if owner else "another kvmplat-agent"
            raise InUse(f"state directory {state_dir} is in use by {who} ({self.path} is locked)") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Unlocks and closes the lock file (idempotent); the file stays, empty of meaning until locked again."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    return 0


def check_socket_free(path: str) -> None:
    """Raises InUse naming the serving agent's pid when something answers on the unix socket `path`."""
    if not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return  # nobody listens: a dead agent's socket, replaced at bind
        pid = _peer_pid(s)
    who = f"pid {pid}" if pid else "another process"
    raise InUse(f"unix socket {path} is already served by {who} (another kvmplat-agent?): one agent per socket")


def _peer_pid(s: socket.socket) -> int:
    with contextlib.suppress(OSError):
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[0])
    return 0
