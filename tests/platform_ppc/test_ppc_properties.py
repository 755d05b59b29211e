"""Property tests: any request on any PowerPC host is admitted with a consistent plan, or cleanly refused."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from kvmplat.agent.errors import InvalidArgument, PlatformRefused
from kvmplat.agent.platform.arch import arch_width, is_cross_arch
from kvmplat.agent.platform.model import Abi, Accel, Arch, CompatPolicy, PlatformRequest, Pv
from kvmplat.agent.platform.ppc import resolve_ppc
from kvmplat.lab.ppc.apply import apply_ppc, plan_ok
from kvmplat.lab.ppc.plan import plan_ppc, ppc_vm_type
from kvmplat.lab.ppc.sim import sim_fds
from ppc_cases import HOSTS

COMPATS = st.one_of(
    st.sampled_from(["", "power6", "POWER7+", "power8", "Power9", "power10", "isa-3.0", "isa-2.06", "power11", "z"]),
    st.integers(0, 0xFFFFFFFF).map(lambda v: f"0x{v:08x}"),
    st.sampled_from(["0x004e1200", "0x004d0200", "0x000c0209", "0x80240012", "0x0f000004", "0x0fxyz", "0x1ffffffff"]),
    st.text(max_size=12),
)
REQUESTS = st.builds(
    PlatformRequest,
    abi=st.sampled_from([None, *Abi]),
    pv=st.frozensets(st.sampled_from(list(Pv))),
    compat=COMPATS,
    policy=st.sampled_from(list(CompatPolicy)),
    bits=st.sampled_from([32, 64, 0, 16, 128]),
    accel=st.sampled_from(list(Accel)),
    arch=st.sampled_from([None, *Arch]),
)


@settings(max_examples=300, deadline=None)
@given(request=REQUESTS, host=st.sampled_from(sorted(HOSTS)))
def test_any_request_resolves_or_is_refused(request: PlatformRequest, host: str) -> None:
    """An admitted request's plan runs cleanly on the simulated kernel; a refusal names a field."""
    try:
        eff = resolve_ppc(request, HOSTS[host])
    except PlatformRefused as e:
        assert e.field in {"arch", "abi", "pv", "compat", "bits", "accel"} and e.reason
        return
    except InvalidArgument as e:
        assert e.violations and e.violations[0][0].startswith("platform.")
        return
    assert eff.accel in HOSTS[host].accels
    assert eff.arch is not None and eff.bits == (request.bits or arch_width(eff.arch))
    assert request.abi is None or eff.abi is request.abi
    assert request.arch is None or eff.arch is request.arch  # never silently another arch
    assert eff.cross_arch == is_cross_arch(eff.arch, HOSTS[host])
    plan = plan_ppc(eff, 2, ppc_vm_type(request.accel, eff, HOSTS[host]))
    assert plan_ok(apply_ppc(plan, sim_fds(HOSTS[host])), plan)
