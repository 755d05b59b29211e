"""A domain the translation can tell no agent runs (issue 13 item 2) is a platform refusal, consistently: the CLI
exits 1 (not the usage error's 2) naming the model or machine without asking any agent, and the libvirt hook
refuses its start the same way (one line, "platform refused"), also without an agent call."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from kvmplat.client.cli.main import EXIT_REFUSED, EXIT_USAGE, main
from kvmplat.client.libvirt.domain_xml import DomainRefused, DomainXmlError, translate
from kvmplat.client.libvirt.qemu_hook import main as hook_main

CORE2DUO = "<cpu mode='custom' match='exact'><model fallback='forbid'>core2duo</model></cpu>"


def _domain(arch: str, machine: str, cpu: str = "") -> str:
    return (
        "<domain type='kvm'><name>d</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
        f"<os><type arch='{arch}' machine='{machine}'>hvm</type></os>{cpu}</domain>"
    )


REFUSED = [
    (_domain("x86_64", "pc", CORE2DUO), "core2duo"),
    (_domain("ppc", "ref405ep"), "ref405ep"),
    (_domain("x86_64", "none"), "none"),
]


@pytest.mark.parametrize(("xml", "named"), REFUSED)
def test_translation_refuses_naming_the_culprit(xml: str, named: str) -> None:
    with pytest.raises(DomainRefused, match=named):
        translate(xml)


def test_allow_fallback_or_a_known_model_is_not_refused() -> None:
    assert translate(_domain("x86_64", "pc", CORE2DUO.replace("forbid", "allow"))).spec.platform.compat == ""
    known = translate(_domain("x86_64", "pc", CORE2DUO.replace("core2duo", "Nehalem"))).spec.platform
    assert known.compat == "x86-64-v2"


@pytest.mark.parametrize(("xml", "named"), REFUSED)
def test_cli_exits_1_naming_it_without_an_agent(tmp_path: Path, xml: str, named: str) -> None:
    f = tmp_path / "d.xml"
    f.write_text(xml)
    out, err = io.StringIO(), io.StringIO()
    env = {"KVMPLAT_AGENT": f"unix://{tmp_path}/no-agent.sock"}  # never dialled: refused before
    assert main(["check", "--xml", str(f)], stdout=out, stderr=err, env=env) == EXIT_REFUSED
    assert named in err.getvalue() and err.getvalue().count("\n") == 1 and out.getvalue() == ""


def test_a_contradictory_document_stays_a_usage_error(tmp_path: Path) -> None:
    f = tmp_path / "d.xml"
    f.write_text(_domain("ppc64le", "mac99"))
    with pytest.raises(DomainXmlError) as e:
        translate(f.read_text())
    assert not isinstance(e.value, DomainRefused)
    err = io.StringIO()
    assert main(["check", "--xml", str(f)], stdout=io.StringIO(), stderr=err, env={}) == EXIT_USAGE


def test_the_hook_refuses_the_start_the_same_way_without_an_agent_call() -> None:
    def no_agent(config: object) -> object:
        raise AssertionError("the hook must not call an agent for a refused platform")

    err = io.StringIO()
    data = io.BytesIO(_domain("x86_64", "pc", CORE2DUO).encode())
    env = {"KVMPLAT_HOOK_CONFIG": "/dev/null"}  # an empty configuration: all defaults
    status = hook_main(["d", "prepare", "begin", "-"], data, io.StringIO(), err, env, agent_factory=no_agent)  # type: ignore[arg-type]
    assert status == 1 and "platform refused" in err.getvalue() and "core2duo" in err.getvalue()
