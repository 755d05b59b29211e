"""The runner's wire format: one JSON object per line over a unix stream socket.

agent -> runner  {"id": N, "op": "hello"|"start"|"pause"|"resume"|"stop"|"stats"|"console"|"destroy", ...}
runner -> agent  {"id": N, "ok": true, "result": {...}} | {"id": N, "ok": false, "error": {"kind", "message"}}
runner -> agent  {"event": {"seq", "time", "state"|"console"|"exit"|"error": ...}}   (unsolicited, in seq order)

"hello" carries `since` (a sequence number); the runner answers with its state and replays the events after it,
so an agent that restarts re-adopts the runner without losing or repeating events.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_LINE", "decode", "encode"]

MAX_LINE = 4 << 20


def encode(msg: dict[str, Any]) -> bytes:
    """One message as a newline-terminated JSON line."""
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One JSON line back into a message."""
    msg = json.loads(line)
    if not isinstance(msg, dict):
        raise ValueError("a runner message must be a JSON object")
    return msg
