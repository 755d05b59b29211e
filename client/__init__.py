"""kvmplat.client: the client library and the `kvmplat` CLI.

`Client` (kvmplat.client.agent) wraps the Agent stubs; errors are in kvmplat.client.errors; spec files in
kvmplat.client.specfile. Nothing is imported here eagerly, so `import kvmplat.client.specfile` (or the libvirt hook)
does not pay for grpc until it asks for `Client`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmplat.client.agent import Client, TlsFiles
    from kvmplat.client.errors import KvmplatError
    from kvmplat.client.scheduling.ask_agents import place
    from kvmplat.client.scheduling.placement_engine import place_on_placement

__all__ = ["Client", "KvmplatError", "TlsFiles", "place", "place_on_placement"]

_LAZY = {
    "Client": "kvmplat.client.agent",
    "TlsFiles": "kvmplat.client.agent",
    "KvmplatError": "kvmplat.client.errors",
    "place": "kvmplat.client.scheduling.ask_agents",
    "place_on_placement": "kvmplat.client.scheduling.placement_engine",
}


def __getattr__(name: str) -> Any:
    """Imports `Client`, `TlsFiles`, `KvmplatError`, `place` and `place_on_placement` on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
