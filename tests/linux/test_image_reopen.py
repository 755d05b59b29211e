"""The runner reads a kernel only if the file it really opened lies inside the image directories."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.runner.machine import _read


def test_a_file_inside_is_read(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "k").write_bytes(b"kernel")
    assert _read(str(images / "k"), "spec.boot.kernel", [str(images)]) == b"kernel"


def test_a_link_swapped_to_outside_after_validation_is_refused(tmp_path: Path) -> None:
    images, secret = tmp_path / "images", tmp_path / "secret"
    images.mkdir()
    secret.write_bytes(b"host file")
    (images / "k").symlink_to(secret)  # what an attacker could put there between the agent's check and the open
    with pytest.raises(InvalidArgument, match="now leads outside the image directories"):
        _read(str(images / "k"), "spec.boot.kernel", [str(images)])


def test_without_image_dirs_the_path_is_read_as_given(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(b"x")
    assert _read(str(tmp_path / "k"), "spec.boot.kernel", None) == b"x"
