"""A real OpenStack Placement for the tests (the `openstack-placement` package from .venv): SQLite in a private
directory, `auth_strategy = noauth2`, the WSGI app `placement.wsgi.api:application` under wsgiref on one address.
Started and stopped like the libvirtd harness: `PlacementService(host)` returns once Placement answers; `close()`
stops it and removes its files. Requests carry `X-Auth-Token: admin` (noauth2's admin) and microversion 1.39."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from proc_util import stop_process

MANAGE = str(Path(sys.executable).parent / "placement-manage")
CONF = "[DEFAULT]\n[api]\nauth_strategy = noauth2\n[placement_database]\nconnection = sqlite:///{db}\n"
# wsgiref on an ephemeral port: the chosen port is printed once the socket listens
SERVER = """
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server
from placement.wsgi.api import application
class Quiet(WSGIRequestHandler):
    def log_message(self, *a): pass
srv = make_server(sys.argv[1], 0, application, handler_class=Quiet)
print(srv.server_port, flush=True)
srv.serve_forever()
"""
HEADERS = {"X-Auth-Token": "admin", "OpenStack-API-Version": "placement 1.39", "Accept": "application/json"}


def placement_unavailable() -> str:
    """Why a Placement cannot be started here ("" when it can)."""
    if importlib.util.find_spec("placement") is None:
        return "openstack-placement is not installed (a pyproject dependency: run make all)"
    return "" if os.path.exists(MANAGE) else f"no {MANAGE}"


class PlacementService:
    """One Placement process listening on `host` (loopback, or a veth address the namespaces reach)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kvmplat-placement-"))
        conf = self.dir / "placement.conf"
        conf.write_text(CONF.format(db=self.dir / "placement.sqlite"))
        env = {**os.environ, "OS_PLACEMENT_CONFIG_DIR": str(self.dir)}
        sync = subprocess.run([MANAGE, "--config-file", str(conf), "db", "sync"], env=env, capture_output=True)
        assert sync.returncode == 0, f"placement-manage db sync: {sync.stderr.decode()[-800:]}"
        self.log_path = self.dir / "placement.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVER, host], env=env, stdout=subprocess.PIPE, stderr=log
            )
        assert self.proc.stdout is not None
        port = self.proc.stdout.readline().strip()  # blocks until the socket listens (or the process dies)
        assert port, f"Placement did not start: {self.log_path.read_text()[-800:]}"
        self.url = f"http://{host}:{int(port)}"

    def get(self, path: str) -> Any:
        """GET `path`, decoded."""
        return self.request("GET", path)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One request as noauth2's admin; the decoded JSON (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {**HEADERS, **({"Content-Type": "application/json"} if data is not None else {})}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def providers(self) -> dict[str, dict[str, Any]]:
        """Provider name -> provider."""
        return {rp["name"]: rp for rp in self.get("/resource_providers")["resource_providers"]}

    def traits(self, rp_uuid: str) -> set[str]:
        """The provider's traits."""
        return set(self.get(f"/resource_providers/{rp_uuid}/traits")["traits"])

    def usages(self, rp_uuid: str) -> dict[str, int]:
        """The provider's usages by resource class."""
        return {k: int(v) for k, v in self.get(f"/resource_providers/{rp_uuid}/usages")["usages"].items()}

    def allocations(self, rp_uuid: str) -> dict[str, dict[str, int]]:
        """Consumer -> resources on the provider."""
        data = self.get(f"/resource_providers/{rp_uuid}/allocations")["allocations"]
        return {c: a["resources"] for c, a in data.items()}

    def close(self) -> None:
        """Stops Placement and removes its files."""
        stop_process(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class PlacedAgent:
    """A kvmplat-agent registered with Placement at `url`, advertising its own `address`, started by the one
    launcher (kvmplat.client.localagent); its state dir survives a kill, so it can be started again (re-adoption
    and reconciliation)."""

    def __init__(self, address: str, state_dir: Path, url: str, *flags: str, netns: str = "", tls: Any = None) -> None:
        self.address, self.state_dir, self.netns, self.tls = address, state_dir, netns, tls
        self.flags = ["--placement-url", url, "--advertise", address, *flags]
        self.log_path = state_dir.parent / f"{state_dir.name}.log"
        self.local: Any = None
        self.start()

    def start(self, *extra: str) -> None:
        """Starts the agent (with `extra` flags this time) and waits until it answers."""
        from kvmplat.client.localagent import LocalAgent

        if self.local is not None:
            self.local.client.close()
        wrapper = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.local = LocalAgent.start(
            self.state_dir.parent,
            [*self.flags, *extra],
            address=self.address,
            wrapper=wrapper,
            tls=self.tls,
            timeout=30,
            state_dir=self.state_dir,
            log_path=self.log_path,
        )
        self.proc, self.client = self.local.proc, self.local.client

    def provider_uuid(self) -> str:
        """The provider UUID the agent keeps in its state dir."""
        return (self.state_dir / "placement-provider-uuid").read_text().strip()

    def kill(self) -> None:
        """SIGKILL: the runners keep running, the agent learns nothing."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (a clean shutdown; VMs keep running)."""
        self.local.stop(destroy_vms=False)

    def close(self) -> None:
        """Destroys every VM, stops the agent."""
        self.local.stop()
