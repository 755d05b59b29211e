"""kvmplat.client: the client library and the `kvmplat` CLI.

`Client` (kvmplat.client.client) wraps the Agent stubs; errors are in kvmplat.client.errors; spec files in
kvmplat.client.specfile. Nothing is imported here eagerly, so `import kvmplat.client.specfile` (or the libvirt hook)
does not pay for grpc until it asks for `Client`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmplat.client.client import Client, TlsFiles
    from kvmplat.client.errors import KvmplatError
    from kvmplat.client.placement import place

__all__ = ["Client", "KvmplatError", "TlsFiles", "place"]

_LAZY = {
    "Client": "kvmplat.client.client",
    "TlsFiles": "kvmplat.client.client",
    "KvmplatError": "kvmplat.client.errors",
    "place": "kvmplat.client.placement",
}


def __getattr__(name: str) -> Any:
    """Imports `Client`, `TlsFiles`, `KvmplatError` and `place` on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
