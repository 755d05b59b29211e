"""Shared test fixtures and the rule that turns KVM skips into failures where /dev/kvm exists.

Tiers (markers): plain unit tests need nothing; `kvm` tests run real guests on /dev/kvm; `e2e` tests start an agent
and drive it over gRPC or the CLI. A test needing KVM skips only where /dev/kvm is absent; with KVMPLAT_REQUIRE_KVM=1
(set by .ci/run) such a skip is a failure when /dev/kvm is present.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

HAVE_KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)
KVM_SKIP_REASON = "needs /dev/kvm (absent or not accessible on this machine)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `kvm`-marked tests where /dev/kvm is missing."""
    if HAVE_KVM:
        return
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=KVM_SKIP_REASON))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under KVMPLAT_REQUIRE_KVM=1, a skip mentioning /dev/kvm fails where /dev/kvm exists."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.skipped or os.environ.get("KVMPLAT_REQUIRE_KVM") != "1" or not os.path.exists("/dev/kvm"):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "/dev/kvm" in reason or "kvm" in item.keywords:
        report.outcome = "failed"
        report.longrepr = f"KVM test skipped although /dev/kvm exists: {reason}"
