"""The agent's CPU share against the host's other sessions.

Where the kernel shares CPU between sessions before it shares it between their processes (autogroup: a kernel
with CONFIG_SCHED_AUTOGROUP, for processes outside a cgroup with a CPU controller), the agent's session is one group
as heavy as any shell's. Its event loop, its runner template and the runners (which answer every lifecycle request,
and run the guests) are all in it, so under load each RPC waited for a CPU behind whatever else ran: measured with
bench/load.py, the agent's event-loop thread was runnable but not running half of the time, and p99 was 57-64 ms
against 44-48 ms with the session at nice -15 (-10: 52-54 ms). The agent therefore gives its session the nice value
of --session-nice (default -15: about 28 times an ordinary session's weight; 0 leaves it) when it leads its session
(a daemon, or started with its own; an agent sharing a terminal's session leaves that session alone) and may
(CAP_SYS_NICE). Under systemd the service's cgroup decides instead (deploy/kvmplat-agent.service: CPUWeight).
"""

from __future__ import annotations

import logging
import os

__all__ = ["DEFAULT_SESSION_NICE", "claim_session_share"]

DEFAULT_SESSION_NICE = -15
AUTOGROUP = "/proc/self/autogroup"
ENABLED = "/proc/sys/kernel/sched_autogroup_enabled"

log = logging.getLogger("kvmplat.agent")


def claim_session_share(nice: int, autogroup: str = AUTOGROUP, enabled: str = ENABLED) -> str:
    """Sets the agent's session (autogroup) to `nice`; returns what was done, also logged."""
    if nice == 0:
        return _said("session CPU share left as it is (--session-nice 0)")
    if os.getsid(0) != os.getpid():
        return _said("session CPU share left as it is: the agent shares its session (it is not a daemon)")
    try:
        with open(enabled) as f:
            on = f.read().strip() == "1"
        with open(autogroup, "w") as f:
            f.write(str(nice))
    except FileNotFoundError:
        return _said("session CPU share left as it is: this kernel does not group CPU by session (no autogroup)")
    except PermissionError:
        return _said(f"session CPU share left as it is: nice {nice} needs CAP_SYS_NICE")
    if not on:
        return _said(f"session nice set to {nice}; it takes effect once kernel.sched_autogroup_enabled is 1")
    return _said(f"session nice set to {nice}: the agent and its runners before other sessions for the CPU")


def _said(text: str) -> str:
    log.info("%s", text)
    return text
