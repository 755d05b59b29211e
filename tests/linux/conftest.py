"""Linux loader and image tests: registers the `slow` marker (the real image build, run with KVMPLAT_RUN_SLOW=1)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker so --strict-markers accepts it."""
    config.addinivalue_line("markers", "slow: downloads Debian packages and builds the real guest image (~10 s)")
