"""VM states as the client sees them: the proto's VmState values, named and grouped here once (the agent's own
lifecycle table is agent/registry/lifecycle.py; these groups follow it)."""

from __future__ import annotations

from kvmplat.v1 import agent_pb2 as pb

__all__ = ["ACTIVE", "ENDED", "state_name"]

ENDED: tuple[int, ...] = (pb.STOPPED, pb.CRASHED)  # the guest is gone; only destroy is left
ACTIVE: tuple[int, ...] = (pb.RUNNING, pb.PAUSED)  # the guest has vCPUs; a stop ends it


def state_name(state: int) -> str:
    """A VmState without prefix (RUNNING, UNSPECIFIED); the number itself when the proto does not name it."""
    try:
        return pb.VmState.Name(state).removeprefix("VM_STATE_")
    except ValueError:
        return str(state)
