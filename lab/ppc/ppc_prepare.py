"""Preparing the PowerPC lab (lab.py): ppc64el packages through a private apt configuration, Debian's kernel, the
KVM-PR kernel built from linux-source-6.1, and the initramfs; everything cached in CACHE with progress on stderr."""

from __future__ import annotations

import compileall
import hashlib
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kvmplat.lab.common import cache_dir

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


CACHE = cache_dir("ppc")


def _mirror() -> str:
    """$KVMPLAT_PPC_MIRROR, else the Debian archive this host's apt already uses, else deb.debian.org."""
    if os.environ.get("KVMPLAT_PPC_MIRROR"):
        return os.environ["KVMPLAT_PPC_MIRROR"]
    apt = Path("/etc/apt")
    for f in [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.sources")), *apt.glob("sources.list.d/*.list")]:
        try:
            text = f.read_text()
        except OSError:
            continue
        for uri in re.findall(r"^\s*(?:URIs:|deb(?:\s+\[[^]]*\])?)\s+(https?://\S+)", text, re.M):
            if uri.rstrip("/").endswith("/debian"):
                return str(uri).rstrip("/")
    return "http://deb.debian.org/debian"


MIRROR = _mirror()
KERNEL_META = "linux-image-powerpc64le"
SOURCE_PKG = "linux-source-6.1"
# python3.11 and cffi (ABI mode) with only the libraries the lab's imports load; the stdlib's optional extension
# modules (sqlite, readline, ...) are not imported, so their libraries are left out.
GUEST_PKGS = (
    "busybox-static",
    "libc6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libpython3.11-minimal",
    "python3.11-minimal",
    "libpython3.11-stdlib",
    "python3-cffi-backend",
    "python3-cffi",
    "python3-pycparser",
    "python3-ply",
)
# Unpacked but not needed in the guest: documentation and the stdlib's big unused trees.
PRUNE = (
    "usr/share",
    "usr/lib/powerpc64le-linux-gnu/gconv",  # iconv modules: python's own codecs do not use them
    *(f"usr/lib/python3.11/{d}" for d in (
        "test", "idlelib", "tkinter", "lib2to3", "ensurepip", "pydoc_data", "turtledemo", "unittest", "asyncio",
        "xml", "xmlrpc", "sqlite3", "multiprocessing", "distutils", "venv", "curses", "dbm", "wsgiref",
    )),
)  # fmt: skip
QEMU = "qemu-system-ppc64"
CONFIGS = {
    # name: (kernel, -M options, kernel arguments)
    "hv": ("stock", "pseries,cap-nested-hv=on", ""),
    "pr": ("pr", "pseries,cap-nested-hv=on", "disable_radix"),
}


class LabError(Exception):
    """A preparation or boot step failed; the message names the step and what to do."""


def progress(msg: str) -> None:
    """One progress line on stderr."""
    print(f"ppc-lab: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, quiet: bool = True) -> str:
    """Runs a command; a failure becomes a LabError with the command and its last error lines."""
    done = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE if quiet else sys.stderr, stderr=subprocess.PIPE, text=True
    )
    if done.returncode:
        tail = "\n".join((done.stderr or done.stdout or "").strip().splitlines()[-5:])
        raise LabError(f"{' '.join(cmd)} failed ({done.returncode}):\n{tail}")
    return done.stdout or ""


# --- ppc64el packages through a private apt configuration -----------------------------------------------------


def apt_env() -> dict[str, str]:
    """APT_CONFIG pointing at the cache's ppc64el configuration (rewritten, with fresh lists, when it changes)."""
    root = CACHE / "apt"
    conf = root / "apt.conf"
    sources = f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR} bookworm main\n"
    text = (
        f'Dir::State::Lists "{root}/lists";\nDir::State::status "{root}/status";\nDir::Cache "{root}/cache";\n'
        f'Dir::Etc::SourceList "{root}/sources.list";\nDir::Etc::SourceParts "{root}/parts";\n'
        'APT::Architecture "ppc64el";\nAPT::Architectures { "ppc64el"; };\nAcquire::Languages "none";\n'
    )
    if os.geteuid() == 0:  # as root apt drops to _apt, which cannot write into the root-owned cache
        text += 'APT::Sandbox::User "root";\n'
    listed = root / "sources.list"
    if not conf.exists() or conf.read_text() != text or not listed.exists() or listed.read_text() != sources:
        shutil.rmtree(root / "lists", ignore_errors=True)
        for d in ("lists/partial", "cache/archives/partial", "parts"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        listed.write_text(sources)
        conf.write_text(text)
    return dict(os.environ, APT_CONFIG=str(conf))


def apt_update(force: bool = False) -> None:
    """Fetches the ppc64el package lists once (or again when a download found them stale)."""
    env = apt_env()  # first: a changed configuration starts from empty lists
    if force or not any((CACHE / "apt" / "lists").glob("*Packages*")):
        progress(f"apt-get update (bookworm ppc64el lists from {MIRROR})")
        run(["apt-get", "-q", "update"], env=env)


def candidate(pkg: str) -> tuple[str, str]:
    """(version, architecture) apt would download for `pkg`."""
    text = run(["apt-cache", "show", "--no-all-versions", pkg], env=apt_env())
    version = re.search(r"^Version: (\S+)", text, re.M)
    arch = re.search(r"^Architecture: (\S+)", text, re.M)
    if not version or not arch:
        raise LabError(f"apt knows no ppc64el {pkg}")
    return version.group(1), arch.group(1)


def fetch(pkg: str) -> Path:
    """The cached .deb of `pkg`'s candidate, downloaded with `apt-get download` when absent."""
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    version, arch = candidate(pkg)
    name = f"{pkg}_{version.split(':')[-1]}_{arch}.deb"
    if (debs / name).exists():
        return debs / name
    progress(f"apt-get download {pkg}={version} ({arch})")
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        try:
            run(["apt-get", "download", "-q", f"{pkg}={version}"], cwd=Path(tmp), env=apt_env())
        except LabError:
            apt_update(force=True)  # a point release replaced the file: refresh the lists and ask again
            return fetch(pkg)
        got = next(Path(tmp).glob("*.deb"))
        os.replace(got, debs / name)
    return debs / name


def stock_kernel_pkg() -> str:
    """linux-image-6.1.0-N-powerpc64le: what the metapackage depends on."""
    text = run(["apt-cache", "depends", KERNEL_META], env=apt_env())
    m = re.search(r"Depends: (linux-image-\S+-powerpc64le)", text)
    if not m:
        raise LabError(f"{KERNEL_META} depends on no linux-image-*-powerpc64le")
    return m.group(1)


def unpack(debs: list[Path], dest: Path) -> None:
    """dpkg-deb -x of every .deb into dest (built beside it, then renamed, so a half unpack is never used)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(tmp)])
    os.replace(tmp, dest)


def drop_stale(prefix: str) -> None:
    """Removes cache entries named prefix* (an older key's) before a new one is made."""
    for old in CACHE.glob(f"{prefix}*"):
        shutil.rmtree(old, ignore_errors=True)


def key_of(*parts: str) -> str:
    """A short content key for cache directory names."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


# --- what the guests boot ----------------------------------------------------------------------------------------


def guest_root() -> Path:
    """busybox, python3.11 and cffi for ppc64el unpacked in the cache, pruned, with the stdlib compiled to .pyc."""
    debs = [fetch(p) for p in GUEST_PKGS]
    root = CACHE / f"root-{key_of(*(d.name for d in debs), *PRUNE)}"
    if root.exists():
        return root
    progress(f"unpacking {len(debs)} ppc64el packages into {root}")
    drop_stale("root-")
    unpack(debs, root)
    for rel in PRUNE:
        shutil.rmtree(root / rel, ignore_errors=True)
    compile_tree(root / "usr/lib/python3.11", "/usr/lib/python3.11")
    compile_tree(root / "usr/lib/python3/dist-packages", "/usr/lib/python3/dist-packages")
    return root


def compile_tree(path: Path, guest_path: str) -> None:
    """.pyc beside the sources (the guest's python3.11 has this host's bytecode magic), checked by nothing: the
    emulated CPU then never compiles source and never stats it for freshness."""
    ok = compileall.compile_dir(
        str(path),
        ddir=guest_path,
        quiet=2,
        workers=0,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    if not ok:
        raise LabError(f"compileall failed under {path}")


def stock_kernel() -> tuple[Path, Path]:
    """(vmlinux, root with lib/modules) of Debian's ppc64el kernel, unpacked in the cache."""
    deb = fetch(stock_kernel_pkg())
    root = CACHE / f"kernel-{deb.stem}"
    if not root.exists():
        progress(f"unpacking {deb.name}")
        unpack([deb], root)
    vmlinux = next((root / "boot").glob("vmlinux-*"), None)
    if vmlinux is None:
        raise LabError(f"{deb.name} has no /boot/vmlinux-*")
    return vmlinux, root


def pr_kernel() -> Path:
    """The KVM-PR (and HV) kernel from linux-source-6.1 and kvm-pr.config, built only when not cached."""
    deb = fetch(SOURCE_PKG)
    fragment = HERE / "kvm-pr.config"
    out = CACHE / f"kernel-pr-{key_of(deb.name, fragment.read_text())}"
    if (out / "vmlinux").exists():
        return out / "vmlinux"
    src = CACHE / "build" / SOURCE_PKG
    shutil.rmtree(src.parent, ignore_errors=True)
    src.parent.mkdir(parents=True)
    progress(f"unpacking {deb.name} and its source tarball")
    unpack([deb], src.parent / "deb")
    tarball = next((src.parent / "deb/usr/src").glob(f"{SOURCE_PKG}.tar.*"))
    run(["tar", "-xf", str(tarball), "-C", str(src.parent)])
    shutil.rmtree(src.parent / "deb")
    jobs = str((os.cpu_count() or 1) + 1)
    kmake = ["make", "-C", str(src), "ARCH=powerpc", "CROSS_COMPILE=powerpc64le-linux-gnu-"]
    run([*kmake, f"KCONFIG_ALLCONFIG={fragment}", "allnoconfig"])
    config = (src / ".config").read_text()
    for opt in ("CONFIG_KVM_BOOK3S_64_PR=y", "CONFIG_KVM_BOOK3S_64_HV=y", "CONFIG_PPC_OF_BOOT_TRAMPOLINE=y"):
        if opt not in config.splitlines():
            raise LabError(f"allnoconfig with {fragment.name} did not keep {opt}")
    progress(f"building the KVM-PR kernel (make -j{jobs} vmlinux; about 4 min on 2 cores, once per machine)")
    started = time.monotonic()
    run([*kmake, f"-j{jobs}", "vmlinux"])
    drop_stale("kernel-pr-")
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "vmlinux", tmp / "vmlinux")
    shutil.copyfile(src / ".config", tmp / "config")
    os.replace(tmp, out)
    shutil.rmtree(src.parent, ignore_errors=True)
    progress(f"built {out / 'vmlinux'} in {time.monotonic() - started:.0f} s")
    return out / "vmlinux"


def initramfs(root: Path, stock_root: Path) -> Path:
    """A newc initramfs: the ppc64el root, Debian's kvm.ko/kvm-hv.ko, kvmplat's staged code under /lab, /init."""
    from kvmplat.client.guest_image import CpioEntry, cpio_newc
    from kvmplat.lab.ppc.guest import stage

    with tempfile.TemporaryDirectory() as tmp:
        stage(tmp)
        probe32(Path(tmp) / "probe32.bin")
        compile_tree(Path(tmp), "/lab")
        entries = [CpioEntry(d, 0o040755) for d in ("dev", "proc", "sys", "tmp", "lab")]
        entries.append(CpioEntry("dev/console", 0o020600, rdev=(5, 1)))
        entries += tree_entries(root, "")
        entries += tree_entries(Path(tmp), "lab/")
        for ko in sorted(stock_root.glob("lib/modules/*/kernel/arch/powerpc/kvm/kvm*.ko")):
            rel = ko.relative_to(stock_root)
            entries += [CpioEntry(str(p), 0o040755) for p in reversed(rel.parents) if str(p) != "."]
            entries.append(CpioEntry(str(rel), 0o100644, ko.read_bytes()))
        entries.append(CpioEntry("init", 0o100755, (HERE / "init.sh").read_bytes()))
        data = cpio_newc(_dedup(entries))
    out = CACHE / "initrd.cpio"
    out.write_bytes(data)
    progress(f"initramfs {out}: {len(data) / 2**20:.1f} MiB")
    return out


def probe32(out: Path) -> Path:
    """lab/ppc/probe32.S (the 32-bit Book3S probe) assembled big-endian 32-bit into a flat binary at `out`."""
    obj = out.with_suffix(".o")
    run(["powerpc64le-linux-gnu-as", "-a32", "-mbig", "-o", str(obj), str(HERE / "probe32.S")])
    run(["powerpc64le-linux-gnu-objcopy", "-O", "binary", str(obj), str(out)])
    obj.unlink()
    return out


def tree_entries(top: Path, prefix: str) -> list[Any]:
    """CpioEntry for every directory, file and symlink under `top` (directories first, sorted)."""
    from kvmplat.client.guest_image import CpioEntry

    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        base = Path(dirpath)
        for name in [*dirnames, *sorted(filenames)]:
            path = base / name
            rel = prefix + str(path.relative_to(top))
            st = path.lstat()
            if path.is_symlink():
                out.append(CpioEntry(rel, st.st_mode, os.readlink(path).encode()))
            elif path.is_dir():
                out.append(CpioEntry(rel, st.st_mode))
            else:
                out.append(CpioEntry(rel, st.st_mode, path.read_bytes()))
    return out


def _dedup(entries: list[Any]) -> list[Any]:
    """Each path once (the first wins): module parents repeat directories the root already has."""
    seen: set[str] = set()
    out = []
    for e in entries:
        if e.name not in seen:
            seen.add(e.name)
            out.append(e)
    return out
