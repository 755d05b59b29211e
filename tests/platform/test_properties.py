"""Property tests: any request on any host fixture resolves to an EffectivePlatform or a clean refusal, and the CPUID
table of every admitted platform is well-formed; any PlatformSpec message converts or is InvalidArgument."""

from __future__ import annotations

from hosts import HARDWARE, PVM, load_host
from hypothesis import given, settings
from hypothesis import strategies as st
from kvmplat.agent.errors import InvalidArgument, PlatformRefused
from kvmplat.agent.platform.levels import X86_LEVELS, known_names
from kvmplat.agent.platform.model import Abi, Accel, CompatPolicy, EffectivePlatform, PlatformRequest, Pv
from kvmplat.agent.platform.proto import request_from_proto
from kvmplat.agent.platform.resolve import resolve
from kvmplat.agent.platform.x86 import cpuid_table
from kvmplat.v1 import agent_pb2 as pb

HOSTS = [load_host(PVM), load_host(HARDWARE)]
compats = st.one_of(
    st.sampled_from(["", *known_names(), "X86-64-V3", "0x0f000005", "0x004e1202"]),
    st.text(max_size=12),
    st.integers(0, 2**40).map(hex),
)
requests = st.builds(
    PlatformRequest,
    abi=st.one_of(st.none(), st.sampled_from(Abi)),
    pv=st.frozensets(st.sampled_from(Pv)),
    compat=compats,
    policy=st.sampled_from(CompatPolicy),
    bits=st.one_of(st.sampled_from([32, 64]), st.integers(-(2**33), 2**33)),
    accel=st.sampled_from(Accel),
)


@settings(max_examples=400, deadline=None)
@given(requests, st.sampled_from(HOSTS))
def test_any_request_resolves_or_is_refused_cleanly(request: PlatformRequest, host: object) -> None:
    try:
        e = resolve(request, host)
    except (PlatformRefused, InvalidArgument):
        return
    assert isinstance(e, EffectivePlatform) and e.abi == Abi.BARE_METAL and not e.cross_arch
    assert e.compat in ("", *X86_LEVELS)
    rows = cpuid_table(e, host)  # type: ignore[arg-type]
    assert all(len(r) == 7 and all(0 <= x < 2**32 for x in r) for r in rows)
    assert len({(r[0], r[1]) for r in rows}) == len(rows)
    hv = any(r[0] == 1 and r[5] >> 31 & 1 for r in rows)
    assert hv == bool(e.pv)
    assert any(0x40000000 <= r[0] < 0x50000000 for r in rows) == bool(e.pv)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.lists(st.integers(0, 2**31 - 1), max_size=4),
    st.text(max_size=12),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**31 - 1),
)
def test_any_spec_message_converts_or_is_invalid_argument(
    abi: int, pv: list[int], compat: str, policy: int, bits: int, accel: int
) -> None:
    spec = pb.PlatformSpec(abi=abi, pv=pv, compat=compat, compat_policy=policy, bits=bits, accel=accel)
    try:
        request_from_proto(spec)
    except InvalidArgument as e:
        assert e.violations and e.violations[0][0].startswith("spec.platform.")
