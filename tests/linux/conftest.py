"""Linux guest tests: the `slow` marker (the real image build and its QEMU run, ~20 s; `-m "not slow"` leaves them
out while iterating, CI runs them) and fixtures for guests run under a real kvmplat-agent: tiny ELF "kernels"
(guest_harness.py) and Debian's kernel from the guest image."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest_harness import Agent, tiny_elf


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker so --strict-markers accepts it."""
    config.addinivalue_line("markers", "slow: builds the real guest image, or boots it in QEMU (~10 s each)")


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for tiny kernels, one of the agent's image directories."""
    return tmp_path_factory.mktemp("kernels")


@pytest.fixture(scope="module")
def guest_agent(tmp_path_factory: pytest.TempPathFactory, kernels: Path) -> Iterator[Agent]:
    """One agent for a module's tiny guests (each test names its own VM)."""
    agent = Agent(tmp_path_factory.mktemp("agent"), [str(kernels)])
    yield agent
    agent.close()


@pytest.fixture
def kernel(kernels: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    """kernel(code) -> the path of a tiny ELF kernel running `code`, named after the test."""

    def write(code: bytes) -> str:
        path = kernels / f"{request.node.name}.elf"
        path.write_bytes(tiny_elf(code))
        return str(path)

    yield write


def _writable_or_built(root: Path) -> bool:
    """Whether the image cache at `root` is usable without root: already built, or creatable here."""
    if (root / "image.json").exists():
        return True
    parent = next((p for p in (root, *root.parents) if p.exists()), Path("/"))
    return os.access(parent, os.W_OK)


@pytest.fixture(scope="session")
def debian_image() -> dict[str, str]:
    """The Linux guest image (Debian's kernel, vmlinux, busybox initramfs), built on first use, in CI too.

    Uses $KVMPLAT_IMAGE_DIR or /var/lib/kvmplat/images; where that cannot be written, ~/.cache/kvmplat/images. A
    build failure fails the tests that need the image (they must run wherever /dev/kvm exists)."""
    from kvmplat.client import guest_image as image

    if not os.environ.get("KVMPLAT_IMAGE_DIR") and not _writable_or_built(image.image_dir()):
        os.environ["KVMPLAT_IMAGE_DIR"] = str(Path.home() / ".cache" / "kvmplat" / "images")
    try:
        return image.paths()
    except image.ImageError:
        pass
    try:
        return image.build(lambda message: print(f"kvmplat image: {message}", file=sys.stderr))
    except image.ImageError as exc:
        pytest.fail(f"could not build the Linux guest image: {exc}")


@pytest.fixture(scope="module")
def debian_agent(tmp_path_factory: pytest.TempPathFactory, debian_image: dict[str, str]) -> Iterator[Agent]:
    """An agent allowed to boot the image's kernel, vmlinux and initrd."""
    dirs = sorted({str(Path(debian_image[k]).resolve().parent) for k in ("kernel", "vmlinux", "initrd")})
    agent = Agent(tmp_path_factory.mktemp("agent"), dirs)
    yield agent
    agent.close()
