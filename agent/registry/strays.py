"""What an agent killed at a bad moment leaves behind in its state directory, found and ended before the next agent
adopts its VMs: the old runner template (with the runners it was still starting), runners whose VM was never
recorded (the agent died between the runner's start and the record's write: no client was told of that VM), and
runner sockets that no record names.

Processes are recognised by their command line: the template runs as `python -m kvmplat.agent.runner.template
--state-dir DIR`, and its runners are forks of it (same command line) named RUNNER_COMM (/proc/PID/comm). The
current template's own children (its spare runners, forked before any VM asks) are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["RUNNER_COMM", "SPARE_COMM", "TEMPLATE_MODULE", "alive", "end_strays", "runners_of", "template_argv"]

log = logging.getLogger("kvmplat.agent")
TEMPLATE_MODULE = "kvmplat.agent.runner.template"
RUNNER_COMM = "kvmplat-runner"
SPARE_COMM = "kvmplat-spare"  # a spare runner, set up and waiting for its config


def template_argv(state_dir: str) -> list[str]:
    """The template's arguments after the interpreter: its module and the state directory it serves."""
    return ["-m", TEMPLATE_MODULE, "--state-dir", os.path.realpath(state_dir)]


def _proc(pid: int | str) -> tuple[list[bytes], str, int, str] | None:
    """The arguments after the interpreter, state, parent and name of process `pid`; None when it is gone."""
    proc = Path("/proc", str(pid))
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")[1:-1]
        state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        comm = (proc / "comm").read_text().strip()
    except OSError:
        return None
    return argv, state, int(ppid), comm


def _ours(state_dir: str, template_pid: int = 0) -> list[tuple[int, bool]]:
    """(pid, is a runner) of every template and runner serving `state_dir`, but `template_pid`'s children."""
    want = [a.encode() for a in template_argv(state_dir)]
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or (info := _proc(proc.name)) is None:
            continue
        argv, state, ppid, comm = info
        if argv == want and state != "Z" and not (template_pid and ppid == template_pid):
            out.append((int(proc.name), comm == RUNNER_COMM))
    return out


def alive(state_dir: str, pid: int) -> bool:
    """Whether `pid` is a live runner or spare of `state_dir` (one recorded may still be building its VM)."""
    info = _proc(pid)
    return info is not None and info[0] == [a.encode() for a in template_argv(state_dir)] and info[1] != "Z"


def runners_of(state_dir: str) -> list[int]:
    """Pids of the live runners (forks of a template) serving `state_dir`."""
    return [pid for pid, runner in _ours(state_dir) if runner]


def end_strays(state_dir: str, recorded: Iterable[int], names: Iterable[str], template_pid: int) -> None:
    """Kills the old templates and every runner of `state_dir` not in `recorded` (pids), then removes the runner
    sockets of VMs not in `names`. Runs before adoption, while no request is served."""
    recorded = set(recorded)
    old = [(pid, runner) for pid, runner in _ours(state_dir, template_pid) if pid != template_pid]
    # not a runner: a template, or a spare (one recorded was handed its VM's config and builds it: it stays)
    templates = [pid for pid, runner in old if not runner and pid not in recorded]
    _kill(templates, "a runner template of an earlier agent")
    _gone(templates)  # its runners still starting now fail to report, and end
    # with the old templates gone, any other process of ours not recorded is a stray: a runner, or one an old
    # template forked after the first listing that has not named itself a runner yet
    strays = [pid for pid, _ in _ours(state_dir, template_pid) if pid != template_pid and pid not in recorded]
    _kill(strays, "a runner with no VM record (its agent died before recording it)")
    _gone(strays)
    keep = {f"{n}.sock" for n in names}
    for sock in Path(state_dir, "run").glob("*.sock"):
        if sock.name not in keep:
            log.warning("removing runner socket %s: no VM record names it", sock)
            sock.unlink(missing_ok=True)


def _kill(pids: list[int], what: str) -> None:
    for pid in pids:
        log.warning("ending pid %d: %s", pid, what)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _gone(pids: list[int], timeout: float = 5.0) -> None:
    """Waits until each process is gone or a zombie (they are not this agent's children to reap)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state == "Z":
                break
            time.sleep(0.01)
