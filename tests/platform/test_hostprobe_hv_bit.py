"""How hostprobe measures "the hypervisor bit can be hidden" (issue 12), with the probe guests replaced by a KVM model.

Real KVM never lists CPUID.1:ECX[31] in KVM_GET_SUPPORTED_CPUID (the VMM sets it), so the bit must be judged by what
a guest sees with it set versus cleared in the table, never by whether the supported list carries it. Pure: no
/dev/kvm (the lab and test_hostprobe.py measure the real thing).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hosts import HARDWARE, PVM, load_host
from kvmplat.agent.platform import hostprobe
from kvmplat.agent.platform.x86 import HV_BIT, with_bit
from kvmplat.agent.platform.x86host import Row

View = dict[tuple[int, int], tuple[int, int, int, int]]


class FakeKvm:
    """KVM_GET_SUPPORTED_CPUID from a host fixture; no Hyper-V capability."""

    def __init__(self, supported: list[Row]) -> None:
        self.supported = supported

    def get_supported_cpuid(self) -> list[Row]:
        return [tuple(r) for r in self.supported]

    def check_extension(self, cap: object) -> int:
        return 0


def honouring(forced_hv: bool | None = None) -> Callable[..., View]:
    """A guest_cpuid that shows the table exactly (hardware KVM); `forced_hv` pins the hypervisor bit (a KVM that
    ignores the table there)."""

    def guest_cpuid(kvm: object, rows: list[Row], leaves: list[tuple[int, int]]) -> View:
        view: View = {}
        for fn, idx, flags, a, b, c, d in rows:
            if forced_hv is not None and fn == 1:
                c = c | 1 << 31 if forced_hv else c & ~(1 << 31)
            view[(fn, idx if flags & 1 else 0)] = (a, b, c, d)
        return {lf: view.get(lf, (0, 0, 0, 0)) for lf in leaves}

    return guest_cpuid


def _supported_without_hv_bit() -> list[Row]:
    return with_bit(list(load_host(HARDWARE).supported), HV_BIT, False)


def test_real_kvm_lists_no_hypervisor_bit_yet_it_is_hideable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostprobe, "guest_cpuid", honouring())
    host = hostprobe.probe_host(FakeKvm(_supported_without_hv_bit()))  # type: ignore[arg-type]
    assert host.hv_bit_hideable


def test_a_bit_the_guest_always_sees_is_not_hideable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostprobe, "guest_cpuid", honouring(forced_hv=True))
    assert not hostprobe.probe_host(FakeKvm(_supported_without_hv_bit())).hv_bit_hideable  # type: ignore[arg-type]


def test_a_bit_the_guest_can_never_be_shown_is_not_hideable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pv guest must see the bit: a KVM that never shows it cannot honour BARE_METAL versus pv either way."""
    monkeypatch.setattr(hostprobe, "guest_cpuid", honouring(forced_hv=False))
    assert not hostprobe.probe_host(FakeKvm(_supported_without_hv_bit())).hv_bit_hideable  # type: ignore[arg-type]


def test_kvm_pvm_listing_the_bit_stays_hideable(monkeypatch: pytest.MonkeyPatch) -> None:
    supported = with_bit(list(load_host(PVM).supported), HV_BIT, True)
    monkeypatch.setattr(hostprobe, "guest_cpuid", honouring())
    assert hostprobe.probe_host(FakeKvm(supported)).hv_bit_hideable  # type: ignore[arg-type]
