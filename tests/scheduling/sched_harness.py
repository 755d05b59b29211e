"""Real agents for the scheduling tests: on unix sockets or on TCP inside network namespaces made for the test,
with mutual TLS from the security tests' PKI (tests/security/tls_harness.py) plus a server certificate for the
namespaces' addresses."""

from __future__ import annotations

import contextlib
import importlib.util
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from kvmplat.client.agent import TlsFiles
from kvmplat.client.localagent import AGENT as LOCAL_AGENT
from kvmplat.client.localagent import LocalAgent
from kvmplat.v1 import agent_pb2 as pb

AGENT = str(LOCAL_AGENT)
KVMPLAT = str(Path(sys.executable).parent / "kvmplat")


class Agent:
    """One kvmplat-agent process at `address` (run inside `netns` when given), with a state dir of its own, started
    by the one launcher (kvmplat.client.localagent)."""

    def __init__(self, address: str, *flags: str, netns: str = "", tls: TlsFiles | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="kvmplat-sched-"))
        wrapper = ["ip", "netns", "exec", netns] if netns else []
        self.local = LocalAgent.start(self.tmp, flags, address=address, wrapper=wrapper, tls=tls)
        self.address, self.proc, self.client, self.log_path = (
            address,
            self.local.proc,
            self.local.client,
            self.local.log_path,
        )

    def create(self, name: str, memory_mib: int = 16, start: bool = True) -> pb.Vm:
        """Creates (and starts) a `loop` VM."""
        spec = pb.VmSpec(name=name, vcpus=1, memory_mib=memory_mib, boot=pb.BootSpec(builtin="loop"))
        return self.client.create_vm(spec, start=start)

    def close(self) -> None:
        """Destroys every VM, stops the agent, removes its files."""
        try:
            self.local.stop()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass(frozen=True)
class Netns:
    """A network namespace joined to the host by a veth pair: the host end has `host_ip`, the namespace `ip`."""

    name: str
    host_if: str
    host_ip: str
    ip: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netns_unavailable() -> str:
    """Why network namespaces cannot be made here ("" when they can)."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    name = f"kvmplat-probe-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as e:
        return f"`ip netns add` failed: {e.stderr.strip()}"
    _ip("netns", "del", name)
    return ""


@contextlib.contextmanager
def namespaces(count: int) -> Iterator[list[Netns]]:
    """`count` namespaces, each with lo up and a /30 on a veth pair to the host; all deleted afterwards."""
    tag = secrets.token_hex(2)
    net = 100 + int(tag, 16) % 150  # a private 10.N.0.0/16 per run, so parallel runs do not collide
    made: list[Netns] = []
    try:
        for i in range(count):
            ns = Netns(f"kvmplat-{tag}-{i}", f"kvp{tag}h{i}", f"10.{net}.{i}.1", f"10.{net}.{i}.2")
            _ip("netns", "add", ns.name)
            made.append(ns)
            _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", f"kvp{tag}n{i}")
            _ip("link", "set", f"kvp{tag}n{i}", "netns", ns.name)
            _ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
            _ip("link", "set", ns.host_if, "up")
            for cmd in (["link", "set", "lo", "up"], ["addr", "add", f"{ns.ip}/30", "dev", f"kvp{tag}n{i}"]):
                _ip("-n", ns.name, *cmd)
            _ip("-n", ns.name, "link", "set", f"kvp{tag}n{i}", "up")
        yield made
    finally:
        for ns in made:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", ns.host_if)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", ns.name)


def free_port() -> int:
    """A TCP port free on this host right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tls_harness() -> ModuleType:
    """tests/security/tls_harness.py, loaded by path under its own name (both test folders have a conftest)."""
    name = "kvmplat_security_tls_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "security" / "tls_harness.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def make_pki(d: Path, ips: list[str]) -> Path:
    """The security tests' PKI in `d` (CA; server, operator, reader, stranger) plus `netns.pem`/`netns.key`, a
    server certificate from the same CA whose subjectAltName lists `ips` (the agents' namespace addresses)."""
    th = tls_harness()
    th.make_pki(d)
    (d / "netns.ext").write_text("subjectAltName=" + ",".join(f"IP:{ip}" for ip in ips) + "\n")
    th._openssl(d, "req", *th.KEY[:-2], "-keyout", "netns.key", "-out", "netns.csr", "-subj", "/CN=netns-agent")
    sign = ("-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "netns.ext")
    th._openssl(d, "x509", "-req", "-in", "netns.csr", *sign, "-out", "netns.pem")
    return d


def tls_files(pki: Path, who: str) -> TlsFiles:
    """Client TLS files presenting `who`'s certificate."""
    return TlsFiles(str(pki / "ca.pem"), str(pki / f"{who}.pem"), str(pki / f"{who}.key"))


def agent_tls_flags(pki: Path, authz: Path) -> list[str]:
    """The agent's mutual-TLS flags with the namespace server certificate and roles from `authz`."""
    files = ("netns.pem", "netns.key", "ca.pem")
    cert, key, ca = (str(pki / f) for f in files)
    return ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca, "--authz", str(authz)]
