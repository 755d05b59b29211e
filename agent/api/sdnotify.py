"""systemd's readiness protocol (sd_notify): one datagram to $NOTIFY_SOCKET; nothing happens outside systemd."""

from __future__ import annotations

import os
import socket

__all__ = ["notify"]


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Sends `state` (e.g. "READY=1") to the service manager; False when not run under Type=notify or on failure."""
    path = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path  # '@' names an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError:
        return False
    return True
