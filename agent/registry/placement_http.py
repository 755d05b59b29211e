"""A small, blocking HTTP client for the OpenStack Placement API (stdlib urllib, JSON, microversion 1.39).

Blocking on purpose: the agent calls it from worker threads (never from the event loop), the CLI from its own
thread. Every request carries `X-Auth-Token` (a Keystone token; under Placement's `noauth2` strategy the literal
`admin`) and `OpenStack-API-Version: placement 1.39`.

    PlacementError            Placement answered with an error status (status, Placement's error code, its detail)
    PlacementUnreachable      no answer: connection refused, DNS, timeout, a non-JSON body
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["CONCURRENT_UPDATE", "MICROVERSION", "PlacementError", "PlacementHttp", "PlacementUnreachable"]

MICROVERSION = "1.39"
CONCURRENT_UPDATE = "placement.concurrent_update"  # a generation moved under us: read it again and retry


class PlacementError(Exception):
    """Placement refused a request: HTTP status, Placement's error code (e.g. placement.concurrent_update), detail."""

    def __init__(self, method: str, path: str, status: int, code: str, detail: str) -> None:
        super().__init__(f"Placement {method} {path}: {status} {code or ''} {detail}".replace("  ", " ").strip())
        self.status, self.code, self.detail = status, code, detail


class PlacementUnreachable(Exception):
    """Placement did not answer (or not in a form this client reads)."""


class PlacementHttp:
    """Requests against one Placement endpoint (`url` may carry a path prefix, e.g. http://ctl/placement)."""

    def __init__(self, url: str, token: str = "admin", timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{url!r} is not a Placement URL (http://HOST:PORT[/PATH] or https://...)")
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON answer (None for 204); PlacementError for an error status, PlacementUnreachable else."""
        data = None if body is None else json.dumps(body).encode()
        headers = {
            "X-Auth-Token": self.token,
            "OpenStack-API-Version": f"placement {MICROVERSION}",
            "Accept": "application/json",
        }
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise _error(method, path, e) from None
        except (OSError, ValueError) as e:  # URLError, refused, reset, timeout
            raise PlacementUnreachable(f"Placement at {self.url} does not answer {method} {path}: {e}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError as e:
            raise PlacementUnreachable(f"Placement at {self.url} answered {method} {path} with non-JSON: {e}") from None

    def get(self, path: str) -> Any:
        """GET `path`."""
        return self.request("GET", path)

    def put(self, path: str, body: Any = None) -> Any:
        """PUT `path` with a JSON body."""
        return self.request("PUT", path, body)


def _error(method: str, path: str, e: urllib.error.HTTPError) -> PlacementError:
    """Placement's error document ({"errors": [{"code", "detail", ...}]}) as a PlacementError."""
    try:
        first = json.loads(e.read() or b"{}").get("errors", [{}])[0]
        code, detail = str(first.get("code", "")), str(first.get("detail", "")).strip()
    except (ValueError, AttributeError, IndexError, OSError):
        code, detail = "", ""
    return PlacementError(method, path, e.code, code, " ".join(detail.split()) or str(e.reason))
