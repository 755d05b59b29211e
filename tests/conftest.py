"""Shared test fixtures and the rule that turns KVM skips into failures where /dev/kvm exists.

Tiers (markers): plain unit tests need nothing; `kvm` tests run real guests on /dev/kvm; `e2e` tests start an agent
and drive it over gRPC or the CLI. A test needing KVM skips only where /dev/kvm is absent; with KVMPLAT_REQUIRE_KVM=1
(set by .ci/run) such a skip is a failure when /dev/kvm is present.

One exception, explicit and narrow: a test marked `hardware_kvm` needs vmx or svm (a stock Linux kernel booting to
/init); on a host without them (kvm_pvm emulates every guest instruction) it skips with HARDWARE_KVM_SKIP_REASON,
and that exact skip stays a skip under KVMPLAT_REQUIRE_KVM=1. Any other skip of such a test is still a failure.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The one documented flag for golden files: KVMPLAT_REGEN_GOLDEN=1 rewrites every golden file a test compares
# against (tests/golden/**) with what the code gives now; review the diff before committing it.
REGEN_GOLDEN = os.environ.get("KVMPLAT_REGEN_GOLDEN") == "1"


class Golden:
    """A test's golden files: each call returns the stored content, rewritten first under KVMPLAT_REGEN_GOLDEN=1."""

    def text(self, path: Path, got: str) -> str:
        """The golden text at `path` (after writing `got` there when regenerating)."""
        if REGEN_GOLDEN:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(got)
        assert path.exists(), f"{path} missing: run with KVMPLAT_REGEN_GOLDEN=1"
        return path.read_text()

    def json(self, path: Path, got: Any, indent: int = 2, ensure_ascii: bool = False) -> Any:
        """The golden JSON at `path` (after writing `got` there, formatted so, when regenerating)."""
        return json.loads(self.text(path, json.dumps(got, indent=indent, ensure_ascii=ensure_ascii) + "\n"))


@pytest.fixture
def golden() -> Golden:
    """Golden files (see Golden); regenerate them with KVMPLAT_REGEN_GOLDEN=1."""
    return Golden()


HAVE_KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)
KVM_SKIP_REASON = "needs /dev/kvm (absent or not accessible on this machine)"


def _hardware_kvm() -> bool:
    """vmx or svm in /proc/cpuinfo: guests run natively, not through an instruction emulator."""
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"^flags\s*:.*\b(vmx|svm)\b", f.read(), re.M) is not None
    except OSError:
        return False


HARDWARE_KVM = _hardware_kvm()
HARDWARE_KVM_SKIP_REASON = (
    "needs hardware KVM (no vmx or svm in /proc/cpuinfo): this host's KVM emulates a stock kernel's instructions "
    "and stops it at the first one its emulator lacks, long before /init (reference/THIS_HOST.md)"
)


def pytest_configure(config: pytest.Config) -> None:
    """Declare the `hardware_kvm` marker."""
    config.addinivalue_line("markers", "hardware_kvm: boots a stock Linux kernel to /init; needs vmx or svm")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `kvm`-marked tests where /dev/kvm is missing, and `hardware_kvm` ones where vmx/svm are."""
    for item in items:
        if "kvm" in item.keywords and not HAVE_KVM:
            item.add_marker(pytest.mark.skip(reason=KVM_SKIP_REASON))
        elif "hardware_kvm" in item.keywords and not HARDWARE_KVM:
            item.add_marker(pytest.mark.skip(reason=HARDWARE_KVM_SKIP_REASON))


# Skip reasons with this text name a file of ../shared/ (beside the checkout) that this clone does not have.
NOT_BESIDE_CHECKOUT = "not beside this checkout"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under KVMPLAT_REQUIRE_KVM=1, a skip mentioning /dev/kvm fails where /dev/kvm exists."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.skipped or os.environ.get("KVMPLAT_REQUIRE_KVM") != "1" or not os.path.exists("/dev/kvm"):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "hardware_kvm" in item.keywords and not HARDWARE_KVM and reason.endswith(HARDWARE_KVM_SKIP_REASON):
        return  # the one skip a host without vmx/svm keeps: see the module docstring
    if NOT_BESIDE_CHECKOUT in reason:
        return  # a file of the project's shared folder, absent beside this clone: nothing to do with KVM
    if "/dev/kvm" in reason or "kvm" in item.keywords:
        report.outcome = "failed"
        report.longrepr = f"KVM test skipped although /dev/kvm exists: {reason}"
