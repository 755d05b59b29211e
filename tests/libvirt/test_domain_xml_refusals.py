"""Hostile, malformed and ambiguous domain documents: each is refused with one clear line, nothing is guessed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from kvmplat.client.libvirt.domain_xml import MAX_XML_BYTES, DomainXmlError, translate

NS = "http://kvmplat.io/xmlns/domain/1"


def domain(
    body: str = "", *, kind: str = "kvm", os: str = "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
) -> str:
    """A small valid domain with `body` appended inside <domain>."""
    return f"<domain type='{kind}'><name>d</name><memory unit='MiB'>64</memory>{os}{body}</domain>"


def meta(inner: str, attrs: str = "") -> str:
    """A domain whose metadata holds one kvmplat:vm with `inner`."""
    return domain(f"<metadata><k:vm xmlns:k='{NS}'{attrs}>{inner}</k:vm></metadata>")


def test_billion_laughs_is_refused() -> None:
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    xml = f'<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY l0 "lol">{lol}]><domain><name>&l9;</name></domain>'
    with pytest.raises(DomainXmlError, match="DTD"):
        translate(xml)


def test_external_entity_is_refused_without_reading_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("kvmplat-secret-424242")
    xml = f'<!DOCTYPE domain [<!ENTITY leak SYSTEM "file://{secret}">]>' + domain().replace(
        "<name>d</name>", "<name>&leak;</name>"
    )
    with pytest.raises(DomainXmlError) as err:
        translate(xml)
    assert "kvmplat-secret" not in str(err.value)


def test_external_dtd_is_refused() -> None:
    with pytest.raises(DomainXmlError, match="DTD"):
        translate('<!DOCTYPE domain SYSTEM "http://127.0.0.1:9/domain.dtd">' + domain())


def test_oversize_document_is_refused_before_parsing() -> None:
    xml = domain("<description>" + "x" * MAX_XML_BYTES + "</description>")
    with pytest.raises(DomainXmlError, match="larger than"):
        translate(xml)


def test_deep_nesting_within_the_size_cap_is_harmless() -> None:
    deep = "<a>" * 50_000 + "</a>" * 50_000
    assert translate(domain(f"<devices><x>{deep}</x></devices>")).spec.name == "d"


def test_translation_is_frozen() -> None:
    t = translate(domain())
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.uuid = "x"  # type: ignore[misc]


REFUSED = [
    ("<domain><name>x</name>", "not well-formed"),
    ("<vm/>", "root element is <vm>"),
    ("<domain type='kvm'><memory>1</memory></domain>", "no <name>"),
    ("<domain type='kvm'><name>x</name></domain>", "no <memory>"),
    (domain("<name>e</name>"), "more than one <name>"),
    (domain("<os/>"), "more than one <os>"),
    (domain().replace("64</memory>", "0</memory>"), "is 0"),
    (domain().replace("unit='MiB'", "unit='furlongs'"), "unknown unit"),
    (domain("<uuid>not-a-uuid</uuid>"), "not a UUID"),
    (domain("<vcpu>0</vcpu>"), "not a positive count"),
    (domain("<vcpu>two</vcpu>"), "not a positive count"),
    (domain("<vcpu current='4'>2</vcpu>"), "above the vcpu count"),
    (domain(kind="xen"), "domain type 'xen'"),
    (domain(kind="lxc"), "domain type 'lxc'"),
    (domain(os="<os><type arch='x86_64'>xen</type></os>"), "hvm"),
    (domain(os="<os><type arch='aarch64' machine='virt'>hvm</type></os>"), "arch 'aarch64'"),
    (domain(os="<os><type arch='x86_64' machine='pseries'>hvm</type></os>"), "PowerPC machine"),
    (domain(os="<os><type arch='ppc64le' machine='q35'>hvm</type></os>"), "PC machine"),
    (domain(os="<os><type arch='ppc64le' machine='zork'>hvm</type></os>"), "not known"),
    (domain(os="<os><type arch='ppc'>hvm</type></os>"), "needs a machine"),
    (
        domain(
            "<cpu mode='host-model'><model>e500mc</model></cpu>",
            os="<os><type arch='ppc64' machine='pseries'>hvm</type></os>",
        ),
        "BookE core",
    ),
    (
        domain(
            "<cpu mode='custom'><model>Haswell</model></cpu>",
            os="<os><type arch='ppc64' machine='pseries'>hvm</type></os>",
        ),
        "not a POWER",
    ),
    (domain("<cpu mode='custom'><model fallback='forbid'>486</model></cpu>"), "fallback='forbid'"),
    (domain("<cpu mode='custom'><model fallback='maybe'>Haswell</model></cpu>"), "fallback='maybe'"),
    (domain("<cpu mode='guess'/>"), "not a libvirt cpu mode"),
    (
        domain("<cpu mode='custom'><model>power9</model></cpu>", os="<os><type>hvm</type></os>"),
        "without an os/type arch",
    ),
    (domain("<launchSecurity type='sev'/>"), "launchSecurity"),
    (meta("", " run='maybe'"), "run='maybe'"),
    (meta("<k:platform abi='s390'/>"), "abi='s390'"),
    (meta("<k:platform pv='kvm,xen'/>"), "pv='xen'"),
    (meta("<k:platform pv='kvm,kvm'/>"), "twice"),
    (meta("<k:platform bits='16'/>"), "bits='16'"),
    (meta("<k:platform accel='tcg'/>"), "accel='tcg'"),
    (meta("<k:platform compat-policy='lenient'/>"), "compat-policy='lenient'"),
    (meta("<k:platform colour='blue'/>"), "unknown attribute"),
    (meta("<k:platform/><k:platform/>"), "more than one <platform>"),
    (meta("<k:disk/>"), "unknown element <disk>"),
    (meta("<k:boot/>"), "builtin"),
    (meta("<k:label key='a'>1</k:label><k:label key='a'>2</k:label>"), "given twice"),
    (domain(f"<metadata><k:vm xmlns:k='{NS}'/><k:vm xmlns:k='{NS}'/></metadata>"), "exactly one"),
    (domain(f"<metadata><k:platform xmlns:k='{NS}'/></metadata>"), "exactly one"),
    (domain("<metadata><k:vm xmlns:k='http://kvmplat.io/xmlns/domain/2'/></metadata>"), "not understood"),
    (
        domain(
            f"<metadata><k:vm xmlns:k='{NS}'><k:boot builtin='loop'/></k:vm></metadata>",
            os="<os><type arch='x86_64'>hvm</type><kernel>/k</kernel></os>",
        ),
        "ambiguous boot source",
    ),
]


@pytest.mark.parametrize(("xml", "message"), REFUSED)
def test_refused_with_a_clear_line(xml: str, message: str) -> None:
    with pytest.raises(DomainXmlError, match=message) as err:
        translate(xml)
    assert "\n" not in str(err.value)


def test_foreign_metadata_is_left_alone() -> None:
    xml = domain("<metadata><app:cfg xmlns:app='http://example.com/app'><app:x/></app:cfg></metadata>")
    t = translate(xml)
    assert not t.opt_in and not any("metadata" in w for w in t.warnings)


def test_uuid_is_canonicalised() -> None:
    assert (
        translate(domain("<uuid>6F1A4D2E3B7C4E8F9A0B1C2D3E4F5A6B</uuid>")).uuid
        == "6f1a4d2e-3b7c-4e8f-9a0b-1c2d3e4f5a6b"
    )
