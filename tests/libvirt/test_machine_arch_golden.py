"""Golden tests (issue 13 items 2 and 5): `<os><type arch machine>` → (abi, arch, bits) for every machine type of
QEMU 7.2's qemu-system-ppc, qemu-system-ppc64 and qemu-system-x86_64 (`-M help`, the names libvirt writes into
domain XML; plus amigaone and prep from QEMU's PowerPC documentation of other versions), under every libvirt arch
that names it. tests/golden/machines/arch-map.json holds the expected outcome of each pair; regenerate with
KVMPLAT_REGEN_GOLDEN=1 and review the diff. The reverse translation must give each admitted platform back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from kvmplat.client.libvirt.domain_reverse import render
from kvmplat.client.libvirt.domain_xml import DomainRefused, DomainXmlError, translate
from kvmplat.v1 import agent_pb2 as pb

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "machines" / "arch-map.json"
REGEN = os.environ.get("KVMPLAT_REGEN_GOLDEN") == "1"
PPC32 = "40p amigaone bamboo g3beige mac99 mpc8544ds none pegasos2 ppce500 prep ref405ep sam460ex virtex-ml507"
PPC64 = "powernv powernv8 powernv9 powernv10 pseries pseries-2.1 pseries-2.12-sxxm pseries-5.2 pseries-7.2"
X86 = "pc q35 microvm isapc pc-i440fx-7.2 pc-i440fx-1.4 pc-q35-7.2 pc-q35-4.0.1 pc-q35-2.4 none x-remote"
PAIRS = [
    *((a, m) for a in ("ppc",) for m in PPC32.split()),
    *((a, m) for a in ("ppc64", "ppc64le") for m in (PPC32 + " " + PPC64).split()),
    *((a, m) for a in ("x86_64", "i686") for m in X86.split()),
    ("x86_64", "pseries"),
    ("x86_64", "mac99"),
]


def _domain(arch: str, machine: str) -> str:
    return (
        f"<domain type='kvm'><name>m</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
        f"<os><type arch='{arch}' machine='{machine}'>hvm</type></os></domain>"
    )


def outcome(arch: str, machine: str) -> dict[str, Any]:
    """The translation of one pair: the platform's abi/arch/bits, or the refusal or usage error's text."""
    try:
        spec = translate(_domain(arch, machine)).spec
    except DomainRefused as e:
        return {"refused": str(e)}
    except DomainXmlError as e:
        return {"error": str(e)}
    p = spec.platform
    return {"abi": pb.Abi.Name(p.abi), "arch": pb.Arch.Name(p.arch), "bits": p.bits or (32 if p.arch == pb.PPC else 64)}


def test_arch_map_golden() -> None:
    """Every pair's outcome equals the golden file's."""
    got = {f"{a} {m}": outcome(a, m) for a, m in PAIRS}
    if REGEN:
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert got.keys() == want.keys()
    for key in got:
        assert got[key] == want[key], key


@pytest.mark.parametrize(("arch", "machine"), PAIRS, ids=[f"{a}-{m}" for a, m in PAIRS])
def test_reverse_gives_the_platform_back(arch: str, machine: str) -> None:
    """The reverse translation of an admitted pair's spec translates to the same abi, arch and bits."""
    try:
        spec = translate(_domain(arch, machine)).spec
    except DomainXmlError:
        return
    again = translate(render(spec)).spec.platform
    assert (again.abi, again.arch, again.bits) == (spec.platform.abi, spec.platform.arch, spec.platform.bits)


def test_every_powerpc_machine_maps_to_a_powerpc_arch() -> None:
    """The issue's list: pseries* SPAPR, ppce500/mpc8544ds BOOKE, mac99/g3beige/powernv*/40p BARE_METAL."""
    want = {
        "pseries": "SPAPR",
        "pseries-2.12-sxxm": "SPAPR",
        "ppce500": "BOOKE",
        "mpc8544ds": "BOOKE",
        "mac99": "BARE_METAL",
        "g3beige": "BARE_METAL",
        "powernv9": "BARE_METAL",
        "40p": "BARE_METAL",
    }
    for machine, abi in want.items():
        got = outcome("ppc64", machine)
        assert got["abi"] == abi and got["arch"] in ("PPC", "PPC64"), machine
    assert outcome("ppc", "g3beige") == {"abi": "BARE_METAL", "arch": "PPC", "bits": 32}
    assert outcome("ppc64le", "powernv") == {"abi": "BARE_METAL", "arch": "PPC64LE", "bits": 64}
    assert "refused" in outcome("ppc", "ref405ep")
