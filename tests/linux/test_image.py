"""The guest image: newc writer, initramfs, vmlinux extraction, cache record, CLI, and (slow) the real build."""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest
from kvmplat.agent.linux import load_linux
from kvmplat.client import guest_image as image
from kvmplat.client.cli import image as image_cli
from kvmplat.client.guest_image import CpioEntry, ImageError, cpio_newc, extract_vmlinux, init_entries
from linux_fakes import MIB, fake_bzimage, fake_elf


def _read_newc(archive: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """A minimal newc reader: (name, mode, data, rdev) per member, checking magic and 4-byte alignment."""
    out, off = [], 0
    while True:
        assert archive[off : off + 6] == b"070701" and off % 4 == 0
        f = [int(archive[off + 6 + 8 * i : off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = f[1], f[6], (f[9], f[10]), f[11]
        name = archive[off + 110 : off + 110 + namesize - 1].decode()
        data_at = off + 110 + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            assert data_at == len(archive)
            return out
        out.append((name, mode, archive[data_at : data_at + size], rdev))
        off = data_at + size + (-size % 4)


def test_cpio_round_trip() -> None:
    """Files, directories, symlinks and device nodes come back as written, deterministically."""
    entries = [
        CpioEntry("dir", 0o040755),
        CpioEntry("dir/file", 0o100644, b"hello"),
        CpioEntry("link", 0o120777, b"dir/file"),
        CpioEntry("dev/console", 0o020600, rdev=(5, 1)),
        CpioEntry("odd-length-name", 0o100755, b"x" * 7),
    ]
    archive = cpio_newc(entries)
    assert archive == cpio_newc(entries)
    assert _read_newc(archive) == [(e.name, e.mode, e.data, e.rdev) for e in entries]


def test_cpio_empty_archive_is_just_the_trailer() -> None:
    """An empty archive still closes with TRAILER!!!."""
    assert _read_newc(cpio_newc([])) == []


@pytest.mark.skipif(not shutil.which("cpio"), reason="GNU cpio not installed (the pure reader above still runs)")
def test_cpio_readable_by_gnu_cpio() -> None:
    """GNU cpio lists what we wrote."""
    listing = subprocess.run(["cpio", "-it"], input=cpio_newc(init_entries(b"BB")), capture_output=True, check=True)
    expected = ["bin", "dev", "proc", "sys", "tmp", "root", "dev/console", "bin/busybox", "bin/sh", "init"]
    assert listing.stdout.decode().split() == expected


def test_init_entries() -> None:
    """/init reports in the contract's order and reboots; /dev/console exists so /init has a stdout."""
    members = {name: (mode, data, rdev) for name, mode, data, rdev in _read_newc(cpio_newc(init_entries(b"BB")))}
    assert members["bin/busybox"][1] == b"BB" and members["bin/sh"][1] == b"busybox"
    assert stat.S_ISCHR(members["dev/console"][0]) and members["dev/console"][2] == (5, 1)
    script = members["init"][1].decode()
    assert members["init"][0] & 0o111 and script.startswith("#!/bin/busybox sh\n")
    order = ["echo KVMPLAT-INIT", 'echo "nproc=', "grep -m1 '^flags' /proc/cpuinfo", "dmesg | grep -i hypervisor"]
    positions = [script.index(s) for s in [*order, "reboot -f"]]
    assert positions == sorted(positions)


def _bzimage_with(payload: bytes) -> bytes:
    """A fake bzImage whose payload fields point at `payload` (+ the 4 size bytes the kernel build appends)."""
    blob = payload + struct.pack("<I", 12345)
    base = fake_bzimage(payload_offset=0x40, payload_length=len(blob))
    return base[:1024] + bytes(0x40) + blob


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress])
def test_extract_vmlinux(compress: object) -> None:
    """xz (Debian's choice) and gzip payloads decompress to the ELF inside."""
    elf = fake_elf()
    assert callable(compress)
    assert extract_vmlinux(_bzimage_with(compress(elf))) == elf


@pytest.mark.skipif(not shutil.which("zstd"), reason="zstd tool not installed (mk/linux.debs lists it)")
def test_extract_vmlinux_zstd() -> None:
    """zstd payloads go through the zstd tool, without the appended size bytes."""
    elf = fake_elf()
    packed = subprocess.run(["zstd", "-q", "-c"], input=elf, capture_output=True, check=True).stdout
    assert extract_vmlinux(_bzimage_with(packed)) == elf


@pytest.mark.parametrize(
    ("bz", "message"),
    [
        (b"not a kernel", "no 'HdrS'"),
        (fake_bzimage(version=0x0206) + bytes(64), "predates payload_offset"),
        (_bzimage_with(b"\x02\x21\x4c\x18" + bytes(30)), "compressed with lz4"),
        (_bzimage_with(b"plain bytes"), "unknown method"),
        (_bzimage_with(lzma.compress(b"not an elf")), "not an ELF"),
        (_bzimage_with(b"\xfd7zXZ\x00garbage"), "corrupt xz payload"),
    ],
)
def test_extract_vmlinux_refusals(bz: bytes, message: str) -> None:
    """What cannot be extracted says why."""
    with pytest.raises(ImageError, match=message):
        extract_vmlinux(bz)


def test_paths_before_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """paths() names the command to run when nothing is built."""
    monkeypatch.setenv("KVMPLAT_IMAGE_DIR", str(tmp_path))
    with pytest.raises(ImageError, match="run 'kvmplat image build'"):
        image.paths()


def test_image_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without KVMPLAT_IMAGE_DIR the cache is /var/lib/kvmplat/images."""
    monkeypatch.delenv("KVMPLAT_IMAGE_DIR", raising=False)
    assert image.image_dir() == Path("/var/lib/kvmplat/images")


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """build() with apt and dpkg replaced: packages resolve to fixed names, .debs hold a fake kernel and busybox."""
    monkeypatch.setenv("KVMPLAT_IMAGE_DIR", str(tmp_path))
    calls: list[str] = []

    def download(package: str, debs: Path, progress: image.Progress) -> Path:
        calls.append(package)
        deb = debs / f"{package}_1.0_amd64.deb"
        deb.write_bytes(b"deb")
        return deb

    members = {"boot/vmlinuz-6.1.0-9-amd64": _bzimage_with(lzma.compress(fake_elf())), "bin/busybox": b"BB"}
    monkeypatch.setattr(image, "_resolve_packages", lambda progress: ("linux-image-6.1.0-9-amd64", "busybox-static"))
    monkeypatch.setattr(image, "_download", download)
    monkeypatch.setattr(image, "_deb_member", lambda deb, member: members[member])
    return calls


def test_build_then_reuse(fake_apt: list[str], tmp_path: Path) -> None:
    """A build records its outputs; a second build reuses them without apt; paths() returns the record."""
    steps: list[str] = []
    first = image.build(steps.append)
    assert fake_apt == ["linux-image-6.1.0-9-amd64", "busybox-static"]
    assert Path(first["vmlinux"]).read_bytes() == fake_elf() and first["cmdline"] == image.DEFAULT_CMDLINE
    assert gzip.decompress(Path(first["initrd"]).read_bytes()) == cpio_newc(init_entries(b"BB"))
    assert any("decompressing the vmlinux" in s for s in steps) and steps[-1].startswith("image ready")
    again: list[str] = []
    assert image.build(again.append) == first == image.paths()
    assert fake_apt == ["linux-image-6.1.0-9-amd64", "busybox-static"] and again == [
        f"image already built in {tmp_path}"
    ]


def test_build_repairs_missing_file(fake_apt: list[str]) -> None:
    """A deleted output makes the record stale: paths() refuses, build() rebuilds only what is missing."""
    first = image.build(lambda _: None)
    Path(first["vmlinux"]).unlink()
    with pytest.raises(ImageError):
        image.paths()
    assert image.build(lambda _: None) == first and Path(first["vmlinux"]).exists()


def _cli(argv: list[str]) -> int:
    """Parse as the kvmplat CLI will after registering add_commands, and run the handler."""
    parser = argparse.ArgumentParser(prog="kvmplat")
    image_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_path_json(fake_apt: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`kvmplat image path --json` prints exactly the four keys after `image build`."""
    assert _cli(["image", "build"]) == 0
    capsys.readouterr()
    assert _cli(["image", "path", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"kernel", "vmlinux", "initrd", "cmdline"}


def test_cli_path_unbuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Not built: exit 1 and a message naming the fix."""
    monkeypatch.setenv("KVMPLAT_IMAGE_DIR", str(tmp_path))
    assert _cli(["image", "path", "--json"]) == 1
    assert "kvmplat image build" in capsys.readouterr().err


def _loads_both(paths: dict[str, str]) -> None:
    """Both kernels of a built image load with its initrd and cmdline into a 256 MiB, 2-vCPU guest."""
    initrd = Path(paths["initrd"]).read_bytes()
    members = [m[0] for m in _read_newc(gzip.decompress(initrd))]
    assert "init" in members and "bin/busybox" in members
    for key in ("kernel", "vmlinux"):
        guest = load_linux(Path(paths[key]).read_bytes(), initrd, paths["cmdline"], 256 * MIB, 2)
        assert guest.bsp.regs["rip"] >= 0x1000000


def test_real_image_loads(debian_image: dict[str, str]) -> None:
    """The loaders accept the real image's Debian bzImage and vmlinux."""
    _loads_both(debian_image)


@pytest.mark.slow
def test_real_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real thing: apt-get download (~68 MB), vmlinux extraction, initramfs; about 7-10 s here."""
    monkeypatch.setenv("KVMPLAT_IMAGE_DIR", str(tmp_path))
    started = time.monotonic()
    paths = image.build(print)
    print(f"real build took {time.monotonic() - started:.1f} s")
    assert paths == image.paths()
    _loads_both(paths)


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="qemu-system-x86_64 not installed (make deps)")
def test_initramfs_contract_under_qemu_tcg(debian_image: dict[str, str]) -> None:
    """The built image reaches /init under QEMU's TCG (no KVM needed) and prints the contract; about 7 s here."""
    paths = debian_image
    cmd = ["qemu-system-x86_64", "-M", "pc", "-cpu", "max", "-smp", "2", "-m", "256", "-nographic", "-no-reboot"]
    cmd += ["-monitor", "none", "-serial", "stdio", "-kernel", paths["kernel"], "-initrd", paths["initrd"]]
    done = subprocess.run([*cmd, "-append", paths["cmdline"]], capture_output=True, text=True, timeout=300, check=False)
    out = done.stdout[done.stdout.index("KVMPLAT-INIT") :].splitlines()
    assert out[1] == "nproc=2" and out[2].startswith("flags") and "hypervisor" in out[3].lower()
    assert "reboot: Restarting system" in done.stdout


@pytest.mark.parametrize(
    ("files", "package", "version", "found"),
    [
        (["busybox-static_1%3a1.35.0-4_amd64.deb"], "busybox-static", "1:1.35.0-4", 0),  # the epoch, as apt names it
        (["linux-image-6.1.0-9-amd64_6.1.27-1_amd64.deb"], "linux-image-6.1.0-9-amd64", "6.1.27-1", 0),
        (["busybox-static_1%3a1.35.0-3_amd64.deb"], "busybox-static", "1:1.35.0-4", None),  # another version
        (["busybox-static_1.35.0-4_amd64.deb"], "busybox-static", "1:1.35.0-4", None),  # another epoch
    ],
)
def test_a_cached_deb_is_found_by_its_full_version(
    tmp_path: Path, files: list[str], package: str, version: str, found: int | None
) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"")
    got = image.cached_deb(tmp_path, package, version)
    assert got == (None if found is None else tmp_path / files[found])
