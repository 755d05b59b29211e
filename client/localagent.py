"""The one way to start a private kvmplat-agent: `kvmplat demo`, the benches and the tests' harnesses all use it.

    LocalAgent.start(tmp, flags)   kvmplat-agent beside this interpreter, its socket, state dir and log in `tmp`,
                                   handed out once it answers GetCapabilities
    .stop()                        every VM destroyed (runners outlive their agent by design, and no later agent
                                   would adopt these), then SIGTERM, SIGKILL if it lingers

An agent that exits or stays silent while starting is an `AgentNotStarted` carrying the end of its log.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from kvmplat.client.agent import Client, TlsFiles
from kvmplat.client.errors import KvmplatError

__all__ = ["AGENT", "AgentNotStarted", "LocalAgent"]

AGENT = Path(sys.executable).parent / "kvmplat-agent"
STOP_S = 15.0


class AgentNotStarted(RuntimeError):
    """The agent exited, or did not answer in time; the message ends with its log's last lines."""


class LocalAgent:
    """A running kvmplat-agent of this process's own, with a `Client` on it."""

    def __init__(
        self, tmp: Path, address: str, proc: subprocess.Popen[bytes], client: Client, state_dir: Path, log_path: Path
    ) -> None:
        self.tmp, self.address, self.proc, self.client = tmp, address, proc, client
        self.state_dir, self.log_path = state_dir, log_path

    @classmethod
    def start(
        cls,
        tmp: Path,
        flags: Sequence[str] = (),
        *,
        address: str = "",
        wrapper: Sequence[str] = (),
        program: Sequence[str] = (),
        tls: TlsFiles | None = None,
        timeout: float = 20.0,
        new_session: bool = False,
        state_dir: Path | None = None,
        log_path: Path | None = None,
    ) -> LocalAgent:
        """Starts the agent (on unix://TMP/agent.sock unless `address`; run under `wrapper`, e.g. `ip netns exec`)
        and returns once it answers; AgentNotStarted if it does not within `timeout` seconds. `program` replaces
        kvmplat-agent (a stand-in taking the same --listen and --state-dir). The state dir (TMP/state) and the log
        (TMP/agent.log, appended to) may be named: an agent started again over the same state re-adopts its VMs."""
        address = address or f"unix://{tmp}/agent.sock"
        state_dir, log_path = state_dir or tmp / "state", log_path or tmp / "agent.log"
        argv = [*wrapper, *(program or [str(AGENT)]), "--listen", address, "--state-dir", str(state_dir), *flags]
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=new_session
            )
        agent = cls(tmp, address, proc, Client(address, timeout=30.0, tls=tls), state_dir, log_path)
        try:
            agent._wait_answering(timeout)
        except BaseException:
            agent.stop()
            raise
        return agent

    def _wait_answering(self, timeout: float) -> None:
        """Returns once GetCapabilities answers (a fresh state dir probes the host first). For a unix socket the
        channel is asked only once the socket exists, so gRPC's reconnect backoff never adds to the start."""
        sock = Path(self.address.removeprefix("unix://")) if self.address.startswith("unix://") else None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AgentNotStarted(f"kvmplat-agent exited ({self.proc.returncode}): {self.tail()}")
            if sock is None or sock.exists():
                with contextlib.suppress(KvmplatError):
                    self.client.capabilities()
                    return
            if time.monotonic() > deadline:
                raise AgentNotStarted(f"kvmplat-agent did not answer within {timeout:g} s: {self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 3) -> str:
        """The last lines of the agent's log, on one line."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"

    def stop(self, destroy_vms: bool = True) -> None:
        """Destroys every VM (unless told not to: they then live on for the next agent), then ends the agent
        (SIGTERM, then SIGKILL after STOP_S); idempotent."""
        if self.proc.poll() is None:
            if destroy_vms:
                self.client.destroy_all()
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
