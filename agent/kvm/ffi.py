"""Where the KVM layer's cffi `ffi` and `lib` come from: the compiled `kvmplat.agent.kvm._kvmc`, or cffi's ABI mode.

The compiled module (cbuild.py, API mode) is built for the host it was installed on; an x86 build cannot load on a
ppc64 host such as the PowerPC lab (issue 8). There, `ensure_kvmc()` registers a stand-in `kvmplat.agent.kvm._kvmc` made
in ABI mode: an `FFI` holding the same struct text from cbuild.py and a `lib` whose `kp_ioctl_val`/`kp_ioctl_ptr`
call libc's `ioctl` through `ffi.dlopen(None)` with the compiled functions' contract (result, or -errno). The stand-in
has only what kvm.py and ioctls.py use; the runner's C fast loop and built-in x86 payloads stay compiled-only.

Nothing on the x86 agent path imports this module: there `kvmplat.agent.kvm._kvmc` is the compiled module, unchanged.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["KVMC", "abi_mode_module", "ensure_kvmc"]

KVMC = "kvmplat.agent.kvm._kvmc"

# ABI mode cannot call the compiled helpers, so they are redeclared over libc. `ioctl` is variadic: its third
# argument must be passed as typed cdata (cffi's rule for variadic calls).
_LIBC_CDEF = "int ioctl(int fd, unsigned long request, ...);"


class _AbiLib:
    """The part of `_kvmc.lib` the KVM layer uses, over libc's ioctl."""

    def __init__(self, ffi: Any) -> None:
        self._ffi = ffi
        self._libc = ffi.dlopen(None)

    def kp_ioctl_ptr(self, fd: int, req: int, arg: Any) -> int:
        """ioctl(fd, req, pointer): the result, or -errno."""
        r = int(self._libc.ioctl(fd, req, self._ffi.cast("void *", arg)))
        return -int(self._ffi.errno) if r < 0 else r

    def kp_ioctl_val(self, fd: int, req: int, arg: int) -> int:
        """ioctl(fd, req, value): the result, or -errno."""
        r = int(self._libc.ioctl(fd, req, self._ffi.cast("unsigned long", arg)))
        return -int(self._ffi.errno) if r < 0 else r


def abi_mode_module() -> types.ModuleType:
    """A module with `ffi` (cbuild's structs, ABI mode) and `lib` (ioctl helpers over libc)."""
    from cffi import FFI
    from kvmplat.agent.kvm.cbuild import PPC_STRUCTS, X86_STRUCTS

    ffi = FFI()
    ffi.cdef(X86_STRUCTS + PPC_STRUCTS + _LIBC_CDEF)
    mod = types.ModuleType(KVMC, "kvmplat's KVM cffi bindings in ABI mode (no compiled module on this host)")
    mod.ffi = ffi  # type: ignore[attr-defined]
    mod.lib = _AbiLib(ffi)  # type: ignore[attr-defined]
    mod.ABI_MODE = True  # type: ignore[attr-defined]
    return mod


def ensure_kvmc(force_abi: bool = False) -> types.ModuleType:
    """The `_kvmc` module in use: the compiled one when it loads, else (or when forced) the ABI-mode stand-in."""
    if not force_abi:
        try:
            return importlib.import_module(KVMC)
        except ImportError:
            pass
    mod = abi_mode_module()
    sys.modules[KVMC] = mod
    return mod
