"""The Linux guest image: Debian's kernel and busybox-static fetched with apt-get into a cache, a vmlinux extracted
from the bzImage, and a newc initramfs whose /init reports what the guest sees and reboots.

Cache directory: $KVMPLAT_IMAGE_DIR, else /var/lib/kvmplat/images. Nothing is installed into /boot or the host:
packages are only downloaded (`apt-get download`) and the one file needed from each is streamed out of the .deb.
`build()` is idempotent (a finished build is recorded in image.json and reused); `paths()` reads that record.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

__all__ = [
    "DEFAULT_CMDLINE",
    "DEFAULT_IMAGE_DIR",
    "INIT_SCRIPT",
    "CpioEntry",
    "ImageError",
    "build",
    "cpio_newc",
    "extract_vmlinux",
    "image_dir",
    "init_entries",
    "paths",
]

DEFAULT_IMAGE_DIR = "/var/lib/kvmplat/images"
# reboot=t: a reboot becomes a triple fault (KVM_EXIT_SHUTDOWN), the one way out a guest without ACPI always has;
# panic=-1 reboots at once on a panic instead of hanging; pci=off skips probing a bus the VM does not have.
DEFAULT_CMDLINE = "console=ttyS0 reboot=t panic=-1 pci=off"
KERNEL_META = "linux-image-amd64"
KERNEL_RE = re.compile(r"^linux-image-6\.1[.\d]*-(\d+)-amd64$")
BUSYBOX = "busybox-static"
MANIFEST = "image.json"

Progress = Callable[[str], None]


class ImageError(Exception):
    """The image cannot be built or is not built yet; the message says what to do."""


# --- pure parts: vmlinux extraction, the newc writer, the initramfs contents ---------------------------------------

# Payload compressors a bzImage may use (CONFIG_KERNEL_*), by their stream magic.
_MAGICS = {
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\x5d\x00\x00": "lzma",
    b"\x02\x21\x4c\x18": "lz4",
    b"\x89LZO": "lzo",
}


def _decompress(payload: bytes) -> bytes:
    """Decompress a bzImage payload; the kernel build appends 4 size bytes after the stream, which are ignored."""
    kind = next((name for magic, name in _MAGICS.items() if payload.startswith(magic)), None)
    try:
        if kind == "xz":
            return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        if kind == "lzma":
            return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
        if kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(payload)
        if kind == "zstd":
            return _unzstd(payload)
    except (lzma.LZMAError, zlib.error, OSError) as exc:
        raise ImageError(f"corrupt {kind} payload in the bzImage: {exc}") from exc
    raise ImageError(f"bzImage payload compressed with {kind or 'an unknown method'}: only xz, zstd, gzip, bzip2, lzma")


def _unzstd(payload: bytes) -> bytes:
    """zstd through the zstd tool (mk/linux.debs), without the 4 size bytes the kernel build appends."""
    if not shutil.which("zstd"):
        raise ImageError("the bzImage payload is zstd-compressed and the zstd tool is missing (apt-get install zstd)")
    done = subprocess.run(["zstd", "-dcq"], input=payload[:-4], capture_output=True, check=False)
    if done.returncode:
        raise ImageError(f"zstd could not decompress the bzImage payload: {done.stderr.decode(errors='replace')}")
    return done.stdout


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF vmlinux inside a bzImage, located by the setup header's payload_offset/payload_length (2.08+)."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise ImageError("not a bzImage: no 'HdrS' setup header")
    version, setup_sects = struct.unpack_from("<H", bzimage, 0x206)[0], bzimage[0x1F1] or 4
    if version < 0x0208:
        raise ImageError(f"boot protocol {version:#06x} predates payload_offset (2.08): cannot find the vmlinux")
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    elf = _decompress(bzimage[start : start + length])
    if elf[:4] != b"\x7fELF":
        raise ImageError("the bzImage payload decompressed to something that is not an ELF file")
    return elf


@dataclass(frozen=True)
class CpioEntry:
    """One archive member: `mode` includes the file type bits (stat.S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR)."""

    name: str
    mode: int
    data: bytes = b""  # file contents, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # device major, minor for device nodes


def _pad4(data: bytes) -> bytes:
    """newc aligns headers and file data to 4 bytes."""
    return data + b"\0" * (-len(data) % 4)


def _newc_record(ino: int, entry: CpioEntry) -> bytes:
    """One header + name + data, deterministic (uid/gid 0, mtime 0)."""
    name = entry.name.encode() + b"\0"
    nlink = 2 if entry.mode & 0o170000 == 0o040000 else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, len(name), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    return _pad4(header + name) + _pad4(entry.data)


def cpio_newc(entries: Iterable[CpioEntry]) -> bytes:
    """A newc ("070701") cpio archive of `entries`, in order, closed by the TRAILER!!! record."""
    records = [_newc_record(ino, e) for ino, e in enumerate(entries, start=1)]
    return b"".join(records) + _newc_record(0, CpioEntry("TRAILER!!!", 0))


INIT_SCRIPT = """#!/bin/busybox sh
# kvmplat guest image: report what the guest sees, then reboot (reboot=t on the cmdline makes that a triple fault).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo KVMPLAT-INIT
echo "nproc=$(nproc 2>/dev/null || grep -c ^processor /proc/cpuinfo)"
grep -m1 '^flags' /proc/cpuinfo
dmesg | grep -i hypervisor || echo 'hypervisor: none reported by the kernel'
# kvmplat.poweroff on the cmdline: power off through kvmplat's exit port (0xf4) instead of rebooting
grep -q kvmplat.poweroff /proc/cmdline && mknod /dev/port c 1 4 && echo -n x | dd of=/dev/port bs=1 seek=244 2>/dev/null
reboot -f
"""


def init_entries(busybox: bytes) -> list[CpioEntry]:
    """The initramfs members: directories, /dev/console (so /init has a stdout), busybox and /init."""
    dirs = [CpioEntry(d, 0o040755) for d in ("bin", "dev", "proc", "sys", "tmp", "root")]
    return [
        *dirs,
        CpioEntry("dev/console", 0o020600, rdev=(5, 1)),
        CpioEntry("bin/busybox", 0o100755, busybox),
        CpioEntry("bin/sh", 0o120777, b"busybox"),
        CpioEntry("init", 0o100755, INIT_SCRIPT.encode()),
    ]


# --- I/O: apt, dpkg-deb, the cache -------------------------------------------------------------------------------


def image_dir() -> Path:
    """The cache directory: $KVMPLAT_IMAGE_DIR, else /var/lib/kvmplat/images."""
    return Path(os.environ.get("KVMPLAT_IMAGE_DIR") or DEFAULT_IMAGE_DIR)


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    """Run a command, returning stdout; a failure becomes an ImageError with the command and its last error line."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{cmd[0]} not found: is this a Debian host with apt and dpkg?") from exc
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ImageError(f"{' '.join(cmd)} failed ({done.returncode}): {tail}")
    return done.stdout


def _abi(name: str) -> int:
    """The ABI number in linux-image-6.1.0-N-amd64, for picking the newest."""
    match = KERNEL_RE.match(name)
    return int(match.group(1)) if match else -1


def _kernel_candidates() -> list[str]:
    """linux-image-6.1*-amd64 packages apt knows: the metapackage's dependency first, then the newest by ABI."""
    depends = _run(["apt-cache", "depends", KERNEL_META]) if _known(KERNEL_META) else ""
    picked = [m.group(1) for m in re.finditer(r"Depends:\s*(linux-image-\S+)", depends) if KERNEL_RE.match(m.group(1))]
    found = _run(["apt-cache", "search", "--names-only", r"^linux-image-6\.1.*-amd64$"]).split("\n")
    names = [line.split(" ", 1)[0] for line in found if KERNEL_RE.match(line.split(" ", 1)[0])]
    return picked + sorted(names, key=_abi, reverse=True)


def _known(package: str) -> bool:
    """Whether apt's lists have a candidate for `package`."""
    policy = _run(["apt-cache", "policy", package])
    return "Candidate:" in policy and "Candidate: (none)" not in policy


def _resolve_packages(progress: Progress) -> tuple[str, str]:
    """(kernel package, busybox package) names, refreshing apt's lists once if they know neither."""
    for attempt in range(2):
        kernels = _kernel_candidates()
        if kernels and _known(BUSYBOX):
            return kernels[0], BUSYBOX
        if attempt == 0:
            progress("apt lists lack the kernel or busybox-static: running apt-get update")
            _run(["apt-get", "update"])
    raise ImageError("apt offers no linux-image-6.1*-amd64 or no busybox-static: check the Debian sources")


def _package_info(package: str) -> tuple[str, int]:
    """(candidate version, download size in bytes) from apt-cache show."""
    text = _run(["apt-cache", "show", "--no-all-versions", package])
    version = re.search(r"^Version: (\S+)", text, re.M)
    size = re.search(r"^Size: (\d+)", text, re.M)
    if not version:
        raise ImageError(f"apt-cache show {package} gives no version")
    return version.group(1), int(size.group(1)) if size else 0


def cached_deb(debs: Path, package: str, version: str) -> Path | None:
    """The cache's .deb of this package version. apt-get names it with the epoch's colon escaped
    (busybox-static_1%3a1.35.0-4_amd64.deb for 1:1.35.0-4)."""
    for deb in sorted(debs.glob(f"{package}_*_*.deb")):
        if unquote(deb.name.split("_")[1]) == version:
            return deb
    return None


def _download(package: str, debs: Path, progress: Progress) -> Path:
    """The package's .deb in the cache, downloaded with apt-get unless already there."""
    version, size = _package_info(package)
    cached = cached_deb(debs, package, version)
    if cached is not None:
        progress(f"cached {cached.name} ({cached.stat().st_size / 2**20:.1f} MiB)")
        return cached
    progress(f"downloading {package} {version} ({size / 2**20:.1f} MiB)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        # as root apt drops to _apt, which cannot write into a root-owned cache: keep root for this download
        sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
        _run(["apt-get", "download", "-q", *sandbox, f"{package}={version}"], cwd=Path(tmp))
        got = next(Path(tmp).glob("*.deb"), None)
        if got is None:
            raise ImageError(f"apt-get download {package} produced no .deb")
        final = debs / got.name
        os.replace(got, final)
    progress(f"downloaded {final.name}: {final.stat().st_size / 2**20:.1f} MiB in {time.monotonic() - started:.1f} s")
    return final


def _deb_member(deb: Path, member: str) -> bytes:
    """One file's bytes from a .deb's data archive (streamed: unpacking the kernel's modules would cost ~400 MB)."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                if info.name.lstrip("./") == member.lstrip("./") and info.isfile():
                    data = tar.extractfile(info)
                    if data is not None:
                        content = data.read()
                        proc.kill()  # the rest of the archive is not needed
                        return content
    raise ImageError(f"{deb.name} has no {member}")


def _write(path: Path, data: bytes) -> None:
    """Write atomically, so an interrupted build never leaves a half file that looks finished."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _build_kernel(deb: Path, out: Path, progress: Progress) -> tuple[Path, Path]:
    """vmlinuz and vmlinux for the kernel .deb, into `out` (reused when present)."""
    bz, elf = out / "vmlinuz", out / "vmlinux"
    if not bz.exists():
        name = deb.name.split("_", 1)[0].removeprefix("linux-image-")
        progress(f"extracting /boot/vmlinuz-{name} from {deb.name}")
        _write(bz, _deb_member(deb, f"boot/vmlinuz-{name}"))
    if not elf.exists():
        progress(f"decompressing the vmlinux out of {bz} ({bz.stat().st_size / 2**20:.1f} MiB)")
        _write(elf, extract_vmlinux(bz.read_bytes()))
        progress(f"vmlinux: {elf.stat().st_size / 2**20:.1f} MiB ELF")
    return bz, elf


def _build_initrd(deb: Path, out: Path, progress: Progress) -> Path:
    """The gzip'd newc initramfs (busybox + /init) for the busybox .deb (reused when present)."""
    version = unquote(deb.stem.split("_")[1]).split(":")[-1]  # busybox-static_1%3a1.35.0-4_amd64 -> 1.35.0-4
    # the script's digest in the name: a changed /init must not be served from an old cache
    path = out / f"initrd-busybox-{version}-{_init_tag()}.cpio.gz"
    if not path.exists():
        progress(f"building {path.name} from {deb.name}")
        entries: list[CpioEntry] = init_entries(_deb_member(deb, "bin/busybox"))
        _write(path, gzip.compress(cpio_newc(entries), compresslevel=9, mtime=0))
        progress(f"initramfs: {path.stat().st_size / 2**10:.0f} KiB")
    return path


def _init_tag() -> str:
    """A short digest of /init, recorded with the build."""
    return hashlib.sha256(INIT_SCRIPT.encode()).hexdigest()[:8]


def _cached(root: Path) -> dict[str, str] | None:
    """The recorded build, if it exists, was made with this /init and all its files are still there."""
    try:
        record = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    files = [record.get(k) for k in ("kernel", "vmlinux", "initrd")]
    if record.get("init") != _init_tag() or not all(isinstance(f, str) and Path(f).is_file() for f in files):
        return None
    # the cmdline is policy, not an artifact: always today's default
    return {"kernel": files[0], "vmlinux": files[1], "initrd": files[2], "cmdline": DEFAULT_CMDLINE}


def build(progress: Progress, refresh: bool = False) -> dict[str, str]:
    """Fetch and build the image into the cache (reusing a finished build unless `refresh`); returns paths()."""
    root = image_dir()
    if not refresh and (done := _cached(root)):
        progress(f"image already built in {root}")
        return done
    debs = root / "debs"
    try:
        debs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"cannot create {debs} ({exc.strerror}): set KVMPLAT_IMAGE_DIR to a writable dir") from exc
    kernel_pkg, busybox_pkg = _resolve_packages(progress)
    kernel_deb = _download(kernel_pkg, debs, progress)
    busybox_deb = _download(busybox_pkg, debs, progress)
    out = root / kernel_deb.stem
    out.mkdir(exist_ok=True)
    bz, elf = _build_kernel(kernel_deb, out, progress)
    initrd = _build_initrd(busybox_deb, root, progress)
    record = {"kernel": str(bz), "vmlinux": str(elf), "initrd": str(initrd), "cmdline": DEFAULT_CMDLINE}
    _write(root / MANIFEST, (json.dumps(record | {"init": _init_tag()}, indent=2) + "\n").encode())
    progress(f"image ready in {root}")
    return record


def paths() -> dict[str, str]:
    """{"kernel", "vmlinux", "initrd", "cmdline"} of the built image; ImageError if it is not built."""
    root = image_dir()
    done = _cached(root)
    if done is None:
        raise ImageError(f"no guest image in {root}: run 'kvmplat image build' (or set KVMPLAT_IMAGE_DIR)")
    return done
