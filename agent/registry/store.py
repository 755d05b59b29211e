"""The agent's state directory: one JSON record per VM (spec, runner socket and pid, last known sequence), written
atomically (write, fsync, rename) so that a restarted agent re-adopts its runners."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["Store"]

log = logging.getLogger("kvmplat.agent.registry.store")


class Store:
    """VM records under STATE_DIR/vms/, runner sockets under STATE_DIR/run/."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.vms = self.root / "vms"
        self.run = self.root / "run"
        for d in (self.root, self.vms, self.run):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    def socket_path(self, name: str) -> str:
        """Where the runner of VM `name` listens."""
        return str(self.run / f"{name}.sock")

    def save(self, name: str, record: dict[str, Any], durable: bool = True) -> None:
        """Writes a VM's record atomically (write, rename): whole for any reader, even after SIGKILL.

        `durable` adds the fsyncs that carry it over a host crash. State updates go without: a host crash ends
        every runner anyway, and the record's spec, written durably at create, is what tells the user afterwards.
        """
        path = self.vms / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        data = json.dumps(record).encode()  # one call of the C encoder: json.dump writes piecemeal, holding the GIL
        try:
            while data:
                data = data[os.write(fd, data) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if not durable:
            return
        dfd = os.open(self.vms, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def delete_record(self, name: str) -> None:
        """Forgets a VM's record."""
        (self.vms / f"{name}.json").unlink(missing_ok=True)

    def unlink_socket(self, name: str) -> None:
        """Removes the socket path of VM `name`'s runner (once it is destroyed, before the name can be reused)."""
        Path(self.socket_path(name)).unlink(missing_ok=True)

    def load_all(self) -> list[dict[str, Any]]:
        """Every readable record; a corrupt or half-written one is reported and skipped."""
        out = []
        for path in sorted(self.vms.glob("*.json")):
            try:
                rec = json.loads(path.read_text())
                if not isinstance(rec, dict) or "spec" not in rec or "name" not in rec:
                    raise ValueError("not a kvmplat VM record")
                out.append(rec)
            except (OSError, ValueError) as e:
                log.error("skipping unreadable VM record %s: %s", path, e)
        return out
