"""The PowerPC lab (issue 8): kvmplat's own PowerPC code against real KVM-HV and KVM-PR inside an emulated POWER9.

    .venv/bin/python lab/ppc/lab.py [--only hv|pr] [--keep-logs]      (what `make ppc-lab` runs)

Prepares, in the cache ($KVMPLAT_PPC_CACHE, default /var/cache/kvmplat/ppc), with progress on stderr:
  apt/       a private apt configuration for Debian bookworm ppc64el (the host's dpkg is never touched)
  debs/      the ppc64el .debs fetched with `apt-get download`: the stock kernel, busybox-static, python3.11, cffi
  root-KEY/  those packages unpacked with `dpkg-deb -x` (never installed), stdlib .pyc compiled on this host
  kernel-pr-KEY/vmlinux   the KVM-PR kernel built from linux-source-6.1 with kvm-pr.config (only when absent)
  logs/      the console of each boot
then boots QEMU's pseries POWER9 twice (HV: stock kernel, cap-nested-hv, radix; PR: built kernel, disable_radix).
In each guest /init (init.sh) runs `python3.11 -m kvmplat.agent.platform.ppc_lab`: it learns the host from the real
/dev/kvm, predicts every case with the agent's resolution, applies the plan and compares, then runs the ppc probe
payload under KVM_RUN. The last stdout line is the JSON report; the exit status is 0 only when every check holds.
"""

from __future__ import annotations

import argparse
import compileall
import fcntl
import hashlib
import json
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _cache_dir() -> Path:
    """$KVMPLAT_PPC_CACHE, else /var/cache/kvmplat/ppc when it can be written, else ~/.cache/kvmplat/ppc."""
    if os.environ.get("KVMPLAT_PPC_CACHE"):
        return Path(os.environ["KVMPLAT_PPC_CACHE"])
    system = Path("/var/cache/kvmplat/ppc")
    try:
        system.mkdir(parents=True, exist_ok=True)
        if os.access(system, os.W_OK):
            return system
    except OSError:
        pass
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kvmplat" / "ppc"


CACHE = _cache_dir()
MIRROR = os.environ.get("KVMPLAT_PPC_MIRROR", "http://deb.debian.org/debian")
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
BOOT_TIMEOUT = int(os.environ.get("KVMPLAT_PPC_BOOT_TIMEOUT", "600"))
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
    sys.path.insert(0, str(REPO))  # kvmplat is installed editable in .venv; this also covers a bare checkout
    from kvmplat.agent.platform.ppc_lab import stage
    from kvmplat.client.image import CpioEntry, cpio_newc

    with tempfile.TemporaryDirectory() as tmp:
        stage(tmp)
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


def tree_entries(top: Path, prefix: str) -> list[Any]:
    """CpioEntry for every directory, file and symlink under `top` (directories first, sorted)."""
    from kvmplat.client.image import CpioEntry

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


# --- booting and reading the guests' answers ---------------------------------------------------------------------


def boot(config: str, kernel: Path, initrd: Path) -> dict[str, Any]:
    """Boots one configuration; returns the lab's JSON lines, the markers' times and the wall time."""
    _, machine, append = CONFIGS[config]
    cmd = [QEMU, "-M", machine, "-accel", "tcg", "-cpu", "POWER9", "-m", "2G", "-smp", "1", "-nographic"]
    cmd += ["-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd)]
    cmd += ["-append", f"console=hvc0 quiet loglevel=1 {append}".strip()]
    log = CACHE / "logs" / f"{config}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    progress(f"booting {config}: {' '.join(cmd)} (console: {log})")
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=BOOT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        log.write_bytes(e.stdout or b"")
        raise LabError(f"{config} boot did not power off within {BOOT_TIMEOUT} s (console: {log})") from e
    seconds = time.monotonic() - started
    text = done.stdout.decode(errors="replace").replace("\r", "")
    log.write_text(text + done.stderr.decode(errors="replace"))
    result = parse_console(text)
    result["seconds"] = round(seconds, 1)
    progress(f"{config}: powered off after {seconds:.1f} s (lab inside: {result.get('lab_seconds')} s)")
    if not result["lines"]:
        raise LabError(f"{config}: no lab output on the console (see {log}): {text.strip().splitlines()[-3:]}")
    return result


def parse_console(text: str) -> dict[str, Any]:
    """The lab's JSON lines between the KVMPLAT-LAB markers, its exit status and its time inside the guest."""
    lines: list[dict[str, Any]] = []
    notes: list[str] = []
    begin = end = None
    rc = None
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if "KVMPLAT-LAB-" in line:  # a marker can follow the kernel's unterminated banner on the same line
            line = line[line.index("KVMPLAT-LAB-") :]
        if line.startswith("KVMPLAT-LAB-BEGIN"):
            inside, begin = True, _uptime(line)
        elif line.startswith("KVMPLAT-LAB-END"):
            inside, end = False, _uptime(line)
            m = re.search(r"rc=(\d+)", line)
            rc = int(m.group(1)) if m else None
        elif line.startswith("KVMPLAT-LAB-NOTE"):
            notes.append(line)
        elif inside and line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                notes.append(f"unparsed: {line[:200]}")
    lab_seconds = round(end - begin, 1) if begin is not None and end is not None else None
    return {"lines": lines, "rc": rc, "notes": notes, "lab_seconds": lab_seconds}


def _uptime(line: str) -> float | None:
    m = re.search(r"uptime=([0-9.]+)", line)
    return float(m.group(1)) if m else None


# --- the report and the checks ---------------------------------------------------------------------------

LEVELS = ("power8", "power9", "power10")


def _index(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(host, cases by name, probe, summary) from one boot's lines."""
    lines: list[dict[str, Any]] = result["lines"]
    empty: dict[str, Any] = {}
    host = next((d["host"] for d in lines if "host" in d), empty)
    cases = {d["case"]: d for d in lines if "case" in d}
    probe = next((d for d in lines if "probe" in d), empty)
    summary = next((d["summary"] for d in lines if "summary" in d), empty)
    return host, cases, probe, summary


def _verdicts(cases: dict[str, Any]) -> dict[str, str]:
    return {lv: cases.get(f"spapr-{lv}", {}).get("predicted", "missing") for lv in LEVELS}


def report_hv(result: dict[str, Any]) -> dict[str, Any]:
    """The HV half of the report."""
    _, cases, probe, summary = _index(result)
    return {
        "accel": cases.get("accel-auto", {}).get("accel"),
        "compat": _verdicts(cases),
        "kernel_agrees": summary.get("kernel_agrees") is True and result["rc"] == 0,
        "probe_console": probe.get("probe_console") is True,
        "seconds": result["seconds"],
    }


def report_pr(result: dict[str, Any]) -> dict[str, Any]:
    """The PR half of the report."""
    _, cases, probe, summary = _index(result)
    return {
        "accel": cases.get("accel-auto", {}).get("accel"),
        "compat": _verdicts(cases),
        "pvinfo": cases.get("pv-kvm", {}).get("pvinfo"),
        "kernel_agrees": summary.get("kernel_agrees") is True and result["rc"] == 0,
        "mmio_exit": probe.get("mmio_exit") is True,
        "seconds": result["seconds"],
    }


def check(config: str, result: dict[str, Any]) -> list[str]:
    """What issue 8 item 3/4 expects of this configuration and did not happen (empty when all held)."""
    host, cases, probe, _ = _index(result)
    own, other = config, {"hv": "pr", "pr": "hv"}[config]
    want = {
        f"host learnt from /dev/kvm offers {own} only": host.get("accels") == [own],
        f"AUTO runs {own}": cases.get("accel-auto", {}).get("accel") == own,
        f"accel {own.upper()} runs {own}": cases.get(f"accel-{own}", {}).get("accel") == own,
        f"accel {other.upper()} refused, the kernel's EINVAL confirms": _refused_confirmed(cases.get(f"accel-{other}")),
        "power10 refused, the kernel's EINVAL confirms": _refused_confirmed(cases.get("spapr-power10")),
        "every prediction agrees with the kernel": all(c.get("kernel_agrees") is not False for c in cases.values()),
    }
    if config == "hv":
        want["power8 and power9 admitted (ARCH_COMPAT set and read back)"] = (
            all(cases.get(f"spapr-{lv}", {}).get("kernel_agrees") is True for lv in ("power8", "power9"))
            and _verdicts(cases)["power8"] == _verdicts(cases)["power9"] == "admitted"
        )
        want["H_PUT_TERM_CHAR console line starts with kvmplat-probe"] = probe.get("probe_console") is True
        want["the probe's hypercalls reached userspace"] = bool(probe.get("hcalls"))
    else:
        want["STRICT power8/power9 refused, the kernel's EINVAL confirms"] = all(
            _refused_confirmed(cases.get(f"spapr-{lv}")) for lv in ("power8", "power9")
        )
        be = cases.get("spapr-power8-best-effort", {})
        want["BEST_EFFORT power8 admitted with a note"] = be.get("predicted") == "admitted" and any(
            "BEST_EFFORT" in n for n in be.get("notes", [])
        )
        want["pv KVM reports KVM_PPC_GET_PVINFO's 4 words"] = len(cases.get("pv-kvm", {}).get("pvinfo") or []) == 4
        want["the probe's MMIO store exited to userspace"] = probe.get("mmio_exit") is True
    return [f"{config}: {what}" for what, held in want.items() if not held]


def _refused_confirmed(case: dict[str, Any] | None) -> bool:
    return case is not None and case.get("predicted") == "refused" and case.get("kernel_agrees") is True


def main(argv: list[str] | None = None) -> int:
    """Prepares, boots the configurations, prints the report as the last stdout line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(CONFIGS), help="boot one configuration")
    args = p.parse_args(argv)
    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        if not _try_lock(lock):
            progress(f"waiting for another ppc-lab run using {CACHE}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _run_lab(args.only, started)


def _try_lock(lock: Any) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _run_lab(only: str | None, started: float) -> int:
    """The lab under the cache lock: prepare, boot, check, report."""
    try:
        if shutil.which(QEMU) is None:
            raise LabError(f"{QEMU} not found: install Debian's qemu-system-ppc (make deps does)")
        apt_update()
        configs = [c for c in CONFIGS if only in (None, c)]
        stock, stock_root = stock_kernel()
        kernels = {"stock": stock, **({"pr": pr_kernel()} if "pr" in configs else {})}
        initrd = initramfs(guest_root(), stock_root)
        results = {c: boot(c, kernels[CONFIGS[c][0]], initrd) for c in configs}
    except LabError as e:
        progress(f"FAILED: {e}")
        return 2
    failed = [f for c, r in results.items() for f in check(c, r)]
    for c, r in results.items():
        for n in r["notes"]:
            progress(f"{c}: {n}")
    for f in failed:
        progress(f"FAILED: {f}")
    report: dict[str, Any] = {}
    if "hv" in results:
        report["hv"] = report_hv(results["hv"])
    if "pr" in results:
        report["pr"] = report_pr(results["pr"])
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
