"""Helpers for the security tests: a throwaway PKI made with the openssl CLI, agents on TCP (mutual TLS or
--insecure) or on a unix socket with chosen flags, and gRPC stubs holding a given client certificate."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pbg
from proc_util import stop_process

AGENT = str(Path(sys.executable).parent / "kvmplat-agent")
NAMES = ("server", "operator", "reader", "stranger")


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2")


def make_pki(d: Path, ips: tuple[str, ...] = ("127.0.0.1",)) -> Path:
    """CA-signed certificates for NAMES (CN = name, SAN `ips`/localhost) plus `rogue`: self-signed, CN=operator."""
    _openssl(d, "req", "-x509", *KEY, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test-ca")
    (d / "ext").write_text(f"subjectAltName={','.join(f'IP:{ip}' for ip in ips)},DNS:localhost\n")
    for n in NAMES:
        _openssl(d, "req", *KEY[:-2], "-keyout", f"{n}.key", "-out", f"{n}.csr", "-subj", f"/CN={n}")
        sign = ("-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "ext")
        _openssl(d, "x509", "-req", "-in", f"{n}.csr", *sign, "-out", f"{n}.pem")
    _openssl(d, "req", "-x509", *KEY, "-keyout", "rogue.key", "-out", "rogue.pem", "-subj", "/CN=operator")
    return d


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def channel(port: int, pki: Path, who: str | None) -> grpc.Channel:
    """A TLS channel trusting pki's CA, presenting `who`'s certificate (none when None)."""
    ca = (pki / "ca.pem").read_bytes()
    if who is None:
        creds = grpc.ssl_channel_credentials(ca)
    else:
        creds = grpc.ssl_channel_credentials(ca, (pki / f"{who}.key").read_bytes(), (pki / f"{who}.pem").read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def stub(ch: grpc.Channel) -> pbg.AgentStub:
    """The Agent stub over a channel."""
    return pbg.AgentStub(ch)  # type: ignore[no-untyped-call]


class Agent:
    """One kvmplat-agent process with the given --listen and flags, in a private state dir."""

    def __init__(self, listen: str, *flags: str, tmp: Path | None = None) -> None:
        self.tmp = tmp or Path(tempfile.mkdtemp(prefix="kvmplat-sec-"))
        self.log_path = self.tmp / "agent.log"
        argv = [AGENT, "--listen", listen, "--state-dir", str(self.tmp / "state"), *flags]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)

    def log(self) -> str:
        """What the agent wrote so far."""
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout: float = 20) -> int:
        """The exit code of an agent expected to refuse to start."""
        return self.proc.wait(timeout=timeout)

    def wait_ready(self, st: pbg.AgentStub) -> None:
        """Polls GetCapabilities through `st` until it answers (20 s at most)."""
        deadline = time.monotonic() + 20
        while True:
            try:
                st.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=2)
                return
            except grpc.RpcError:
                assert self.proc.poll() is None, f"agent exited: {self.log()[-800:]}"
                assert time.monotonic() < deadline, "agent did not answer within 20 s"
                time.sleep(0.05)

    def close(self, st: pbg.AgentStub | None = None) -> None:
        """Destroys the VMs `st` can see, stops the agent, removes its files."""
        if st is not None and self.proc.poll() is None:
            with contextlib.suppress(grpc.RpcError):
                for vm in st.ListVms(pb.ListVmsRequest(), timeout=10).vms:
                    req = pb.VmRequest(name=vm.spec.name)
                    with contextlib.suppress(grpc.RpcError):
                        st.StopVm(req, timeout=10)
                    with contextlib.suppress(grpc.RpcError):
                        st.DestroyVm(req, timeout=10)
        if self.proc.poll() is None:
            stop_process(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


def tls_flags(pki: Path) -> list[str]:
    """The agent's mutual-TLS flags for pki."""
    cert, key, ca = (str(pki / f) for f in ("server.pem", "server.key", "ca.pem"))
    return ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca]


class TlsAgent:
    """A running mutual-TLS agent and its port."""

    def __init__(self, agent: Agent, port: int, pki: Path) -> None:
        self.agent, self.port, self.pki = agent, port, pki

    def stub(self, who: str | None) -> Any:
        """An Agent stub presenting `who`'s certificate."""
        return stub(channel(self.port, self.pki, who))


def start_tls_agent(pki: Path, *flags: str) -> TlsAgent:
    """Starts an agent on a free port with mutual TLS and `flags`; waits until the operator certificate is served."""
    port = free_port()
    agent = Agent(f"tcp://127.0.0.1:{port}", *tls_flags(pki), *flags)
    ta = TlsAgent(agent, port, pki)
    agent.wait_ready(stub(channel(port, pki, "operator")))
    return ta
