"""Fixtures for the security tests: one throwaway PKI per session and one mutual-TLS agent with roles per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tls_harness import TlsAgent, channel, make_pki, start_tls_agent, stub


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA, server, operator, reader, stranger (CA-signed) and rogue (self-signed CN=operator) PEM files."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def roles_agent(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsAgent]:
    """An mTLS agent with `--authz`: operator → operator, reader → reader (stranger not named)."""
    authz = tmp_path_factory.mktemp("authz") / "authz.yaml"
    authz.write_text("# who may do what\noperator: operator\n'reader': reader  # read-only\n")
    ta = start_tls_agent(pki, "--authz", str(authz))
    yield ta
    ta.agent.close(stub(channel(ta.port, pki, "operator")))
