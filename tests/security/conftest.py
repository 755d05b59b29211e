"""Fixtures for the security tests: one throwaway PKI per session and one mutual-TLS agent with roles per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tls_harness import Agent, channel, free_port, make_pki, stub


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA, server, operator, reader, stranger (CA-signed) and rogue (self-signed CN=operator) PEM files."""
    return make_pki(tmp_path_factory.mktemp("pki"))


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


@pytest.fixture(scope="module")
def roles_agent(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsAgent]:
    """An mTLS agent with `--authz`: operator → operator, reader → reader (stranger not named)."""
    authz = tmp_path_factory.mktemp("authz") / "authz.yaml"
    authz.write_text("# who may do what\noperator: operator\n'reader': reader  # read-only\n")
    ta = start_tls_agent(pki, "--authz", str(authz))
    yield ta
    ta.agent.close(stub(channel(ta.port, pki, "operator")))
