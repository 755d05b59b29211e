"""Preparing the x86 lab (lab.py): the Linux guest image (Debian's amd64 kernel and busybox-static, fetched with
`apt-get download` by kvmplat's own image builder into CACHE/image), the KVM and virtio-9p modules out of the same
kernel package, and the lab's initramfs; cached in CACHE with progress on stderr."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from kvmplat.lab.common import cache_dir

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
QEMU = "qemu-system-x86_64"
# insmod order (each module's depends= line, X86_LAB.md): KVM for AMD, then virtio-pci and the 9p file system.
MODULES = (
    "irqbypass",
    "kvm",
    "ccp",
    "kvm-amd",
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "9pnet",
    "9pnet_virtio",
    "netfs",
    "fscache",
    "9p",
)


CACHE = cache_dir("x86")


class LabError(Exception):
    """A preparation or boot step failed; the message names the step and what to do."""


def progress(msg: str) -> None:
    """One progress line on stderr."""
    print(f"x86-lab: {msg}", file=sys.stderr, flush=True)


def key_of(*parts: str) -> str:
    """A short content key for cache names."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


# --- the guest image: kernel, vmlinux and busybox initramfs (kvmplat image build) -------------------------------


def image_dir() -> Path:
    """The lab's own Linux guest image, CACHE/image: the default image directory is shared by every checkout on the
    machine, and one with another /init would rebuild it under the lab's feet."""
    return CACHE / "image"


def _seed_debs() -> None:
    """Copies the .debs kvmplat's default image directory already has, so the lab downloads nothing twice."""
    from kvmplat.client import guest_image as image

    mine = image_dir() / "debs"
    mine.mkdir(parents=True, exist_ok=True)
    for other in (Path(image.DEFAULT_IMAGE_DIR), Path.home() / ".cache" / "kvmplat" / "images"):
        _copy_debs(other / "debs", mine)


def _copy_debs(src: Path, mine: Path) -> None:
    for deb in src.glob("*.deb"):
        if not (mine / deb.name).exists():
            progress(f"reusing {deb}")
            shutil.copyfile(deb, mine / f".{deb.name}.tmp")
            os.replace(mine / f".{deb.name}.tmp", mine / deb.name)


def guest_image() -> dict[str, str]:
    """The guest image's paths (kernel, vmlinux, initrd, cmdline), built first when missing."""
    from kvmplat.client import guest_image as image

    os.environ["KVMPLAT_IMAGE_DIR"] = str(image_dir())
    try:
        return image.paths()
    except image.ImageError:
        progress(f"building the Linux guest image in {image_dir()} (kvmplat image build)")
    try:
        _seed_debs()
        return image.build(lambda m: progress(f"image: {m}"))
    except image.ImageError as e:
        raise LabError(f"could not build the Linux guest image: {e}") from e


def _deb(prefix: str) -> Path:
    """The image build's cached .deb named prefix*."""
    found = sorted((image_dir() / "debs").glob(f"{prefix}*.deb"))
    if not found:
        raise LabError(f"no {prefix}*.deb in {image_dir() / 'debs'}: run 'kvmplat image build --refresh'")
    return found[-1]


def kernel_deb(kernel: str) -> Path:
    """The linux-image .deb the image's bzImage came from (its directory is named after the .deb)."""
    deb = image_dir() / "debs" / f"{Path(kernel).parent.name}.deb"
    if not deb.exists():
        raise LabError(f"{deb} is gone: run 'kvmplat image build --refresh'")
    return deb


# --- modules and the initramfs -----------------------------------------------------------------------------------


def modules(deb: Path) -> Path:
    """MODULES out of the kernel .deb into CACHE/modules-<deb>/ (one streamed pass; absent ones are built in)."""
    out = CACHE / f"modules-{deb.stem}"
    if out.exists():
        return out
    progress(f"extracting {len(MODULES)} modules from {deb.name}")
    for old in CACHE.glob("modules-*"):
        shutil.rmtree(old, ignore_errors=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    wanted = {f"{m}.ko" for m in MODULES}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                name = Path(info.name).name
                if info.isfile() and name in wanted and "/kernel/" in info.name:
                    data = tar.extractfile(info)
                    if data is not None:
                        (tmp / name).write_bytes(data.read())
    if not (tmp / "kvm-amd.ko").exists():
        raise LabError(f"{deb.name} has no kvm-amd.ko (compressed modules are not handled yet)")
    os.replace(tmp, out)
    return out


def initramfs(busybox_deb: Path, mods: Path) -> Path:
    """The lab's newc initramfs: busybox, the modules under /modules, /init (init.sh); rebuilt when any changes."""
    from kvmplat.client.guest_image import CpioEntry, _deb_member, cpio_newc

    init = (HERE / "init.sh").read_bytes()
    names = sorted(p.name for p in mods.glob("*.ko"))
    out = CACHE / f"initrd-{key_of(busybox_deb.name, mods.name, init.decode(), *names)}.cpio"
    if out.exists():
        return out
    for old in CACHE.glob("initrd-*.cpio"):
        old.unlink()
    entries = [CpioEntry(d, 0o040755) for d in ("bin", "dev", "proc", "sys", "tmp", "modules")]
    entries += [
        CpioEntry("dev/console", 0o020600, rdev=(5, 1)),
        CpioEntry("bin/busybox", 0o100755, _deb_member(busybox_deb, "bin/busybox")),
        CpioEntry("bin/sh", 0o120777, b"busybox"),
        CpioEntry("init", 0o100755, init),
    ]
    entries += [CpioEntry(f"modules/{n}", 0o100644, (mods / n).read_bytes()) for n in names]
    data = cpio_newc(entries)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    progress(f"initramfs {out}: {len(data) / 2**20:.1f} MiB, modules: {' '.join(names)}")
    return out


def prepare() -> tuple[dict[str, str], Path]:
    """(the guest image's paths, the lab's initramfs), everything fetched or built only when not cached."""
    if shutil.which(QEMU) is None:
        raise LabError(f"{QEMU} not found: install Debian's qemu-system-x86 (make deps does, mk/x86.debs)")
    CACHE.mkdir(parents=True, exist_ok=True)
    img = guest_image()
    return img, initramfs(_deb("busybox-static_"), modules(kernel_deb(img["kernel"])))


def shared_paths(img: dict[str, str]) -> list[str]:
    """What the lab binds into its new root from the read-only share of /: the host's usr and etc, the Python the
    .venv was made from, the checkout, its .venv and the guest image (each at its own path, so nothing moves)."""
    venv = REPO / ".venv"
    paths = ["/usr", "/etc", sys.base_prefix, str(REPO), str(venv.resolve()), str(Path(img["kernel"]).parents[1])]
    for key in ("kernel", "vmlinux", "initrd"):
        paths.append(str(Path(img[key]).resolve().parent))
    out: list[str] = []
    for p in sorted(set(paths), key=len):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out
