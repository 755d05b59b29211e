"""Hostile domain XML through `kvmplat create --xml` against a real agent: entity bombs, external entities and DTDs,
parameter entities, huge and endless documents, deep nesting. Each is refused with one line on stderr (exit 2),
no secret file is read, nothing is fetched, and the agent's VMs are exactly as before."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_harness import AgentProc, loop_spec
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]

CLI = str(Path(sys.executable).parent / "kvmplat")
DOMAIN = "<domain type='kvm'><name>{name}</name><memory unit='MiB'>16</memory>{extra}</domain>"
SECRET = "kvmplat-secret-7d1f"


def _laughs(tmp: Path) -> str:
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    return f'<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY l0 "lol">{lol}]>' + DOMAIN.format(name="&l9;", extra="")


def _quadratic(tmp: Path) -> str:
    big = "x" * 50_000
    return f'<!DOCTYPE domain [<!ENTITY a "{big}">]>' + DOMAIN.format(name="q", extra="<description>" + "&a;" * 2000)


def _xxe(tmp: Path) -> str:
    return f'<!DOCTYPE domain [<!ENTITY s SYSTEM "file://{tmp}/secret">]>' + DOMAIN.format(name="&s;", extra="")


def _parameter(tmp: Path) -> str:
    decl = f'<!ENTITY % p SYSTEM "file://{tmp}/secret"> %p;'
    return f"<!DOCTYPE domain [{decl}]>" + DOMAIN.format(name="pe", extra="")


def _external_dtd(tmp: Path) -> str:
    return '<!DOCTYPE domain SYSTEM "http://127.0.0.1:9/evil.dtd">' + DOMAIN.format(name="dtd", extra="")


def _huge(tmp: Path) -> str:
    return DOMAIN.format(name="huge", extra="<description>" + "x" * (3 << 20) + "</description>")


def _deep(tmp: Path) -> str:
    return DOMAIN.format(name="deep", extra="<devices>" + "<a>" * 100_000 + "</a>" * 100_000 + "</devices>")


def _utf16_bomb(tmp: Path) -> str:
    return _laughs(tmp).replace('version="1.0"', 'version="1.0" encoding="utf-16"')


# case -> (document, exit status, phrase on stderr): 2 is refused by the CLI, 1 by the agent (INVALID_ARGUMENT)
HOSTILE: dict[str, tuple[Callable[[Path], str], int, str]] = {
    "billion-laughs": (_laughs, 2, "DTD"),
    "quadratic-blowup": (_quadratic, 2, "DTD"),
    "external-entity": (_xxe, 2, "DTD"),
    "parameter-entity": (_parameter, 2, "DTD"),
    "external-dtd": (_external_dtd, 2, "DTD"),
    "huge": (_huge, 2, "larger than"),
    "declared-utf16": (_utf16_bomb, 2, ""),
    "deep-nesting": (_deep, 1, "INVALID_ARGUMENT"),  # parsed harmlessly within the size cap; no boot: refused
}


def snapshot(agent: AgentProc) -> list[bytes]:
    """The agent's VMs (spec, state, pid) as bytes."""
    return [
        vm.spec.SerializeToString(deterministic=True) + bytes([vm.state]) + str(vm.runner_pid).encode()
        for vm in agent.list_vms().vms
    ]


def create(agent: AgentProc, path: Path | str, name: str = "x") -> subprocess.CompletedProcess[str]:
    """`kvmplat create NAME --xml PATH` against the agent."""
    argv = [CLI, "--agent", agent.address, "create", name, "--xml", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def kept(shared_agent: AgentProc) -> AgentProc:
    """The module's agent with one running VM."""
    shared_agent.stub.CreateVm(pb.CreateVmRequest(spec=loop_spec("keep"), start=True), timeout=30)
    return shared_agent


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_xml_is_refused_and_changes_nothing(kept: AgentProc, tmp_path: Path, case: str) -> None:
    (tmp_path / "secret").write_text(SECRET)
    make, status, phrase = HOSTILE[case]
    doc = tmp_path / "domain.xml"
    doc.write_text(make(tmp_path), encoding="utf-8")
    before = snapshot(kept)
    out = create(kept, doc)
    assert out.returncode == status, (out.returncode, out.stdout, out.stderr[-500:])
    assert phrase in out.stderr and SECRET not in out.stderr + out.stdout, out.stderr[-500:]
    assert len([ln for ln in out.stderr.splitlines() if "warning:" not in ln]) == 1, out.stderr[-500:]
    assert snapshot(kept) == before


def test_an_endless_file_is_refused_without_reading_it_all(kept: AgentProc) -> None:
    before = snapshot(kept)
    out = create(kept, "/dev/zero")
    assert out.returncode == 2 and "larger than" in out.stderr, out.stderr[-500:]
    assert snapshot(kept) == before
