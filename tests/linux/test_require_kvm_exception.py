"""The one exception to KVMPLAT_REQUIRE_KVM=1 (tests/conftest.py) is narrow: only a `hardware_kvm` test, only on a host
without vmx/svm, only with the exact HARDWARE_KVM_SKIP_REASON keeps its skip; any other skip of a KVM test fails
(checked by running tests/conftest.py on three small cases under KVMPLAT_REQUIRE_KVM=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kvmplat.client.cli.linux_demo import hardware_kvm

pytestmark = pytest.mark.kvm

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
CASES = """
import pytest
from conftest import HARDWARE_KVM_SKIP_REASON

@pytest.mark.kvm
@pytest.mark.hardware_kvm
def test_hardware_only():
    pass

@pytest.mark.kvm
@pytest.mark.hardware_kvm
def test_hardware_only_skipped_for_another_reason():
    pytest.skip("the image is missing")

@pytest.mark.kvm
def test_plain_kvm_test_borrowing_the_reason():
    pytest.skip(HARDWARE_KVM_SKIP_REASON)
"""


def test_only_the_exact_hardware_skip_survives(tmp_path: Path) -> None:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_cases.py").write_text(CASES)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    kvm: real guests\n")
    env = dict(os.environ, KVMPLAT_REQUIRE_KVM="1")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    out = done.stdout
    if hardware_kvm():  # the tests run: a skip of their own is a failure like any other
        assert "PASSED test_cases.py::test_hardware_only" in out, out
        assert "FAILED test_cases.py::test_hardware_only_skipped_for_another_reason" in out, out
    else:  # both skipped at collection with the exact reason, and kept skipped
        assert out.count("SKIPPED [1] test_cases.py") == 2 and "1 failed, 2 skipped" in out, out
    assert "FAILED test_cases.py::test_plain_kvm_test_borrowing_the_reason" in out, out
