"""Live migration between two agents in separate network namespaces (a veth pair between them), over mutual TLS:
the source agent dials the target with its own certificate, the operator reaches each agent with the CLI run in
that agent's namespace. The loop guest's ticks continue on the target."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proc_util import stop_process
from tls_harness import AGENT, free_port, make_pki, tls_flags

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]
CLI = str(Path(sys.executable).parent / "kvmplat")
TICK = re.compile(r"kvmplat-loop tick (\d+)")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def two_netns() -> Iterator[list[tuple[str, str]]]:
    """Two network namespaces joined by a veth pair: [(namespace, its address)] x 2; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag, net = os.getpid() % 100000, 10 + os.getpid() % 200
    ends = [
        (f"kvmplat-m{tag}a", f"10.213.{net}.1", f"kvm{tag}a"),
        (f"kvmplat-m{tag}b", f"10.213.{net}.2", f"kvm{tag}b"),
    ]
    try:
        for ns, _, _ in ends:
            _ip("netns", "add", ns)
        _ip("link", "add", ends[0][2], "type", "veth", "peer", "name", ends[1][2])
        for ns, addr, dev in ends:
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield [(ns, addr) for ns, addr, _ in ends]
    finally:
        for ns, _, _ in ends:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class NsAgent:
    """An mTLS agent started inside a namespace, and the operator's CLI run there."""

    def __init__(self, ns: str, addr: str, pki: Path, tmp: Path) -> None:
        self.ns, self.pki, self.tmp = ns, pki, tmp
        self.address = f"tcp://{addr}:{free_port()}"
        self.log = tmp / "agent.log"
        argv = ["ip", "netns", "exec", ns, AGENT, "--listen", self.address, "--state-dir", str(tmp / "state")]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([*argv, *tls_flags(pki)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while self.cli("caps", "--json").returncode != 0:
            assert self.proc.poll() is None, self.log.read_text()[-800:]
            assert time.monotonic() < deadline, "agent did not answer within 30 s"
            time.sleep(0.2)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`kvmplat` in this agent's namespace, with the operator's certificate."""
        tls = ["--tls-ca", str(self.pki / "ca.pem"), "--tls-cert", str(self.pki / "operator.pem")]
        tls += ["--tls-key", str(self.pki / "operator.key")]
        argv = ["ip", "netns", "exec", self.ns, CLI, "--agent", self.address, *tls, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    def ticks(self, name: str) -> list[int]:
        """The loop guest's tick numbers so far."""
        out = self.cli("events", name, "--json").stdout
        return [int(m.group(1)) for m in TICK.finditer(out)]

    def wait_tick_past(self, name: str, n: int) -> int:
        """Waits until the loop guest printed a tick above `n`; returns the last."""
        deadline = time.monotonic() + 30
        while not (t := self.ticks(name)) or t[-1] <= n:
            assert time.monotonic() < deadline, f"no tick past {n}: {t}"
            time.sleep(0.3)
        return t[-1]

    def close(self) -> None:
        """Ends its VMs (runners outlive agents), then the agent."""
        for name in ("nm",):
            self.cli("stop", name)
            self.cli("destroy", name)
        stop_process(self.proc)


def test_migration_between_network_namespaces_over_mtls(two_netns: list[tuple[str, str]], tmp_path: Path) -> None:
    pki = make_pki(tmp_path, ips=tuple(addr for _, addr in two_netns))
    agents: list[NsAgent] = []
    try:
        for i, (ns, addr) in enumerate(two_netns):
            (tmp_path / f"agent{i}").mkdir()
            agents.append(NsAgent(ns, addr, pki, tmp_path / f"agent{i}"))
        a, b = agents
        spec = tmp_path / "nm.json"
        spec.write_text(json.dumps({"name": "nm", "vcpus": 1, "memory_mib": 16, "boot": {"builtin": "loop"}}))
        assert a.cli("create", "nm", "--spec", str(spec), "--start").returncode == 0
        before = a.wait_tick_past("nm", 1)
        done = a.cli("migrate", "nm", "--to", b.address, "--json")
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["target"] == b.address and summary["rounds"] >= 1
        assert a.cli("show", "nm").returncode == 1  # gone from the source
        b.wait_tick_past("nm", before)
        after = b.ticks("nm")
        assert after[0] > before and after == list(range(after[0], after[0] + len(after)))  # no reset, no jump back
    finally:
        for ag in agents:
            ag.close()
