"""Property tests (issue 13 item 5): every arch × abi × bits × ceiling combination on every host fixture (x86 and
PowerPC) is either admitted consistently or refused with a culprit field; never silently narrowed to another arch,
abi or width, and cross_arch only where the host really runs another arch."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hosts import HOSTS_DIR, load_host
from hypothesis import given, settings
from hypothesis import strategies as st
from kvmplat.agent.errors import InvalidArgument, PlatformRefused
from kvmplat.agent.platform.arch import POWERPC, abi_arches, arch_width, is_cross_arch, ppc_host_arches
from kvmplat.agent.platform.ceiling import above_ceiling
from kvmplat.agent.platform.levels import X86_LEVELS
from kvmplat.agent.platform.model import Abi, Accel, Arch, CompatPolicy, PlatformRequest, Pv
from kvmplat.agent.platform.ppc import PpcHost
from kvmplat.agent.platform.resolve import resolve
from kvmplat.agent.platform.x86host import X86Host

PPC_HOSTS_DIR = Path(__file__).resolve().parents[1] / "golden" / "ppc" / "hosts"
HOSTS: dict[str, Any] = {
    **{p.stem: load_host(p.stem) for p in sorted(HOSTS_DIR.glob("*.json"))},
    **{p.stem: PpcHost.from_file(p) for p in sorted(PPC_HOSTS_DIR.glob("*.json"))},
}
FIELDS = {"arch", "abi", "pv", "compat", "bits", "accel"}
REQUESTS = st.builds(
    PlatformRequest,
    abi=st.sampled_from([None, *Abi]),
    pv=st.frozensets(st.sampled_from([Pv.KVM])),
    compat=st.sampled_from(["", "x86-64-v1", "x86-64-v2", "x86-64-v4", "power8", "power9", "0x000c0209"]),
    policy=st.sampled_from(list(CompatPolicy)),
    bits=st.sampled_from([0, 32, 64]),
    accel=st.sampled_from([Accel.AUTO, Accel.PR]),
    arch=st.sampled_from([None, *Arch]),
)
CEILINGS = {"x86": ["", *X86_LEVELS], "ppc": ["", "power8", "power9"]}


def _outcome(request: PlatformRequest, host: Any, ceiling: str) -> Any:
    try:
        return resolve(request, host, ceiling)
    except (PlatformRefused, InvalidArgument) as e:
        return e


def _host_arches(host: Any) -> tuple[Arch, ...]:
    return (Arch.X86_64,) if isinstance(host, X86Host) else ppc_host_arches(host)


@settings(max_examples=400, deadline=None)
@given(request=REQUESTS, name=st.sampled_from(sorted(HOSTS)), pick=st.integers(0, 4))
def test_admitted_consistently_or_refused_with_a_culprit(request: PlatformRequest, name: str, pick: int) -> None:
    """Admitted: the arch/abi/width asked (or the host's own), an arch the host runs, the abi's arch; refused:
    a field named."""
    host = HOSTS[name]
    ceilings = CEILINGS["x86" if isinstance(host, X86Host) else "ppc"]
    ceiling = ceilings[pick % len(ceilings)]
    got = _outcome(request, host, ceiling)
    if isinstance(got, PlatformRefused):
        assert got.field in FIELDS and got.reason
        return
    if isinstance(got, InvalidArgument):
        assert got.violations and got.violations[0][0].split(".")[-1] in FIELDS
        return
    assert got.arch is not None and got.arch in _host_arches(host)
    assert request.arch is None or got.arch is request.arch
    assert request.abi is None or got.abi is request.abi
    assert got.bits == (request.bits or arch_width(got.arch))
    assert got.arch in abi_arches(got.abi, powerpc=got.arch in POWERPC)
    assert got.cross_arch == (not isinstance(host, X86Host) and is_cross_arch(got.arch, host))
    if isinstance(host, X86Host) and ceiling and got.compat:
        assert not above_ceiling(got.compat, ceiling)  # nothing above the ceiling is ever given
    explicit = dataclasses.replace(request, arch=got.arch, bits=got.bits)
    assert _outcome(explicit, host, ceiling) == got  # the implicit request is the explicit one


@pytest.mark.parametrize("name", sorted(n for n, h in HOSTS.items() if isinstance(h, X86Host)))
@pytest.mark.parametrize("arch", POWERPC)
@pytest.mark.parametrize("abi", [None, *Abi])
def test_x86_refuses_every_powerpc_arch_naming_both(name: str, arch: Arch, abi: Abi | None) -> None:
    """An x86 host refuses a PowerPC arch whatever the abi, naming the arch asked and its own."""
    with pytest.raises(PlatformRefused) as e:
        resolve(PlatformRequest(arch=arch, abi=abi), HOSTS[name])
    assert e.value.field == "arch" and arch.name in str(e.value) and "x86_64" in str(e.value)


@pytest.mark.parametrize("name", sorted(n for n, h in HOSTS.items() if isinstance(h, PpcHost)))
def test_powerpc_hosts_refuse_x86_and_run_32bit_book3s_only_under_pr(name: str) -> None:
    """X86_64 is refused on PowerPC; PPC (32-bit Book3S) is admitted on a Book3S host exactly when PR exists."""
    host = HOSTS[name]
    with pytest.raises(PlatformRefused) as e:
        resolve(PlatformRequest(arch=Arch.X86_64), host)
    assert e.value.field == "arch"
    if host.kind != "book3s":
        return
    got = _outcome(PlatformRequest(arch=Arch.PPC, abi=Abi.BARE_METAL), host, "")
    if "pr" in host.accels:
        assert not isinstance(got, Exception) and got.accel == "pr" and got.cross_arch and got.bits == 32
    else:
        assert isinstance(got, PlatformRefused) and "book3s_pr" in str(got)


def test_fixtures_cover_both_kinds() -> None:
    """The property runs over x86 and PowerPC host truth alike."""
    kinds = {type(h).__name__ for h in HOSTS.values()}
    assert kinds == {"X86Host", "PpcHost"}, json.dumps(sorted(HOSTS)) + sys.version
