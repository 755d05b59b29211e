"""What the labs share: where a lab keeps its cache, and how its guest's console is read back."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def cache_dir(lab: str) -> Path:
    """$KVMPLAT_<LAB>_CACHE, else /var/cache/kvmplat/<lab> when it can be written, else ~/.cache/kvmplat/<lab>."""
    env = os.environ.get(f"KVMPLAT_{lab.upper()}_CACHE")
    if env:
        return Path(env)
    system = Path("/var/cache/kvmplat") / lab
    try:
        system.mkdir(parents=True, exist_ok=True)
        if os.access(system, os.W_OK):
            return system
    except OSError:
        pass
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kvmplat" / lab


@dataclass
class LabConsole:
    """The guest's JSON lines between the KVMPLAT-LAB markers, its notes, exit status and time inside."""

    objects: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rc: int | None = None
    lab_seconds: float | None = None
    ended: bool = False


def read_lab_console(text: str) -> LabConsole:
    """Reads the markers `KVMPLAT-LAB-BEGIN/END uptime=S [rc=N]`, `KVMPLAT-LAB-NOTE` and the JSON lines between."""
    out = LabConsole()
    begin = end = None
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if "KVMPLAT-LAB-" in line:  # a marker can follow kernel output (an unterminated banner) on the same line
            line = line[line.index("KVMPLAT-LAB-") :]
        if line.startswith("KVMPLAT-LAB-BEGIN"):
            inside, begin = True, _number(line, "uptime")
        elif line.startswith("KVMPLAT-LAB-END"):
            inside, end, out.ended = False, _number(line, "uptime"), True
            rc = _number(line, "rc")
            out.rc = int(rc) if rc is not None else None
        elif line.startswith("KVMPLAT-LAB-NOTE"):
            out.notes.append(line)
        elif inside and line.startswith("{"):
            try:
                out.objects.append(json.loads(line))
            except json.JSONDecodeError:
                out.notes.append(f"unparsed: {line[:200]}")
    out.lab_seconds = round(end - begin, 1) if begin is not None and end is not None else None
    return out


def _number(line: str, key: str) -> float | None:
    m = re.search(rf"\b{key}=([0-9.]+)", line)
    return float(m.group(1)) if m else None
