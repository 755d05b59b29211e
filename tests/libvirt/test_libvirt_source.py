"""libvirt-python against libvirt's own test driver (the real library, no daemon): read, translate, fail clearly."""

from __future__ import annotations

from pathlib import Path

import libvirt  # type: ignore[import-untyped]
import pytest
from kvmplat.client.libvirt.domain_xml import translate
from kvmplat.client.libvirt.source import LibvirtError, domain_xml
from kvmplat.v1 import agent_pb2 as pb


def test_reads_the_default_test_domain() -> None:
    xml = domain_xml("test:///default", "test")
    assert xml.startswith("<domain type='test'")
    t = translate(xml)
    assert (t.spec.name, t.spec.vcpus, t.spec.memory_mib) == ("test", 2, 8192)
    assert t.uuid == "6695eb01-f6a4-8304-79aa-97f2502e193f"
    assert t.spec.platform.abi == pb.BARE_METAL and t.spec.platform.bits == 32  # the test domain is i686
    assert any("disk" in w and "interface" in w for w in t.warnings)


def node(tmp_path: Path, *domains: str) -> str:
    """A test-driver URI whose node holds the given domain documents."""
    path = tmp_path / "node.xml"
    path.write_text("<node>" + "".join(domains) + "</node>")
    return f"test://{path}"


GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "domains"


@pytest.mark.parametrize("case", ["ppc64le-pseries-power9-host-model", "x86-opt-in-builtin-labels"])
def test_golden_domains_survive_libvirt(tmp_path: Path, case: str) -> None:
    """libvirt's own parse + format (what XMLDesc returns) keeps the meaning, metadata namespace included."""
    source = (GOLDEN / f"{case}.xml").read_text().replace("type='kvm'", "type='test'", 1)
    xml = domain_xml(node(tmp_path, source), translate(source).spec.name)
    want, got = translate(source), translate(xml)
    assert got.spec.platform.abi == want.spec.platform.abi
    assert got.spec.platform.compat == want.spec.platform.compat
    assert (got.spec.name, got.spec.memory_mib, got.spec.vcpus, got.opt_in) == (
        want.spec.name,
        want.spec.memory_mib,
        want.spec.vcpus,
        want.opt_in,
    )
    assert got.spec.boot == want.spec.boot and dict(got.spec.labels) == dict(want.spec.labels)


def test_metadata_set_through_libvirt_opts_in(tmp_path: Path) -> None:
    """What `virsh metadata --key kvmplat --set` stores is what the translation reads."""
    uri = node(tmp_path, (GOLDEN / "x86-microvm-kernel-boot.xml").read_text().replace("type='kvm'", "type='test'", 1))
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName("fc-micro")
        body = "<vm run='yes'><platform compat='x86-64-v2' compat-policy='best-effort'/><label key='k'>v</label></vm>"
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, body, "kvmplat", "http://kvmplat.io/xmlns/domain/1", 0)
        t = translate(dom.XMLDesc(0))
    finally:
        conn.close()
    assert t.opt_in and t.spec.platform.compat == "x86-64-v2" and t.spec.platform.compat_policy == pb.BEST_EFFORT
    assert dict(t.spec.labels) == {"k": "v"}


def test_inactive_definition() -> None:
    assert "<name>test</name>" in domain_xml("test:///default", "test", inactive=True)


def test_unknown_domain_is_a_clear_error() -> None:
    with pytest.raises(LibvirtError, match=r"domain 'nope'.*[Dd]omain not found"):
        domain_xml("test:///default", "nope")


def test_unreachable_uri_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LibvirtError, match="cannot connect to libvirt at qemu"):
        domain_xml(f"qemu:///system?socket={tmp_path}/none.sock", "x")
