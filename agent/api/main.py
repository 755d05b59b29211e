"""`kvmplat-agent`: the per-host daemon. Serves kvmplat.v1.Agent (plus gRPC health and reflection) on a unix
socket or TCP, keeps its VMs' records in --state-dir, and re-adopts their runners when it restarts.

Exit codes: 0 after SIGTERM/SIGINT, 2 for bad flags, a host that cannot run VMs, a state directory or socket another
live agent holds, or an OS error such as a busy port (the reason on stderr, one line, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from kvmplat.agent.api.cpushare import DEFAULT_SESSION_NICE, claim_session_share

if TYPE_CHECKING:
    from kvmplat.agent.registry.controller import Controller

DEFAULT_SOCKET = "unix:///run/kvmplat/agent.sock"
DEFAULT_STATE_DIR = "/var/lib/kvmplat"
DEFAULT_IMAGE_DIR = "/var/lib/kvmplat/images"
HEADROOM_MIB = 1024  # kept for the host and the agent itself
VCPUS_PER_CORE = 128  # idle vCPUs cost nothing here; a scheduler sizes hosts with --max-vcpus

# gRPC message size limits: requests are small (a spec, a console write; a restore's or an incoming migration's packed
# pages come in guestmem.CHUNK pieces, well under the limit); replies can carry a long ListVms.
MAX_RECEIVE = 4 << 20
MAX_SEND = 16 << 20

log = logging.getLogger("kvmplat.agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The agent's flags (documented in README.md)."""
    from kvmplat.agent import __version__
    from kvmplat.agent.api.tls import add_flags
    from kvmplat.agent.registry import placement

    p = argparse.ArgumentParser(prog="kvmplat-agent", description="kvmplat per-host agent")
    p.add_argument(
        "--listen", default=DEFAULT_SOCKET, help=f"unix:///PATH or tcp://HOST:PORT (default {DEFAULT_SOCKET})"
    )
    p.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, help=f"VM records and runner sockets (default {DEFAULT_STATE_DIR})"
    )
    p.add_argument("--insecure", action="store_true", help="allow plain-text TCP (logs a warning)")
    add_flags(p)
    p.add_argument(
        "--image-dir",
        action="append",
        default=None,
        help=f"where kernels and initrds may come from (repeatable; default $KVMPLAT_IMAGE_DIR or {DEFAULT_IMAGE_DIR})",
    )
    p.add_argument(
        "--max-memory-mib", type=int, default=0, help="memory for all guests (default: host RAM minus 1 GiB)"
    )
    p.add_argument(
        "--max-vcpus", type=int, default=0, help=f"vCPUs for all guests (default: {VCPUS_PER_CORE} per host core)"
    )
    p.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log lines as text or one JSON object each"
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve Prometheus metrics at /metrics (default: off)")
    p.add_argument(
        "--max-level",
        default="",
        metavar="LEVEL",
        help="a level ceiling: offer nothing above it (x86-64-v1..v4; power6..power10 on PowerPC); default: none",
    )
    p.add_argument(
        "--session-nice",
        type=int,
        default=DEFAULT_SESSION_NICE,
        choices=range(-20, 20),
        metavar="N",
        help="the CPU weight of the agent's session (its runners and VMs too) against the host's other sessions, "
        f"where the kernel groups CPU by session (autogroup); -20..19, 0 leaves it (default {DEFAULT_SESSION_NICE})",
    )
    placement.add_flags(p)
    p.add_argument("--version", action="version", version=f"kvmplat-agent {__version__}")
    args = p.parse_args(argv)
    if args.max_level:
        import platform

        from kvmplat.agent.platform.ceiling import parse_max_level

        try:
            args.max_level = parse_max_level(args.max_level, platform.machine().startswith("ppc"))
        except ValueError as e:
            p.error(str(e))
    return args


class _JsonFormatter(logging.Formatter):
    """One JSON object a line: time (RFC 3339, UTC), level, logger, msg, and exc (a traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out = {"time": when, "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler])


def _host_memory_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


async def serve(args: argparse.Namespace) -> int:
    """Runs the agent until SIGTERM or SIGINT."""
    from kvmplat.agent.api.exclusive import StateLock, check_socket_free
    from kvmplat.agent.api.tls import listener
    from kvmplat.agent.registry.placement import config_from_args

    lis = listener(args)
    placement = config_from_args(args)
    lock = StateLock(args.state_dir)  # held until this process ends: one agent per state directory
    try:
        if lis.socket_path:
            check_socket_free(lis.socket_path)  # before anything could unlink a live agent's socket
        if lis.insecure:
            log.warning("serving plain-text gRPC on %s (--insecure): anyone who reaches it controls VMs", args.listen)
        controller = await _controller(args)
        controller.address = args.listen
        controller.peer_tls = _peer_tls(args)
        try:
            return await _serve(args, lis, controller, placement)
        finally:
            await controller.close()
    finally:
        lock.release()


async def _serve(args: argparse.Namespace, lis: Any, controller: Controller, placement: Any) -> int:
    """Adopts the VMs, joins Placement (when configured), serves metrics (when asked) and gRPC until a signal; the
    controller is closed by the caller."""
    from grpc_health.v1 import health_pb2
    from kvmplat.agent.api import metrics, sdnotify

    await controller.adopt_all()
    if placement is not None:  # after re-adoption: the allocations are reconciled with the VMs held
        from kvmplat.agent.api.placement import join

        await join(controller, placement, args.state_dir)
    stop_metrics = (
        metrics.serve(args.metrics_listen, controller, asyncio.get_running_loop()) if args.metrics_listen else None
    )
    server, health_servicer, service = _grpc_server(lis.interceptors, controller)
    try:
        lis.add_port(server)  # a unix socket is created 0600: only its owner may drive VMs
        await server.start()
        lis.secure_socket()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        where = controller.platforms.describe()
        log.info("kvmplat-agent serving on %s (state %s, %s)", args.listen, args.state_dir, where)
        claim_session_share(args.session_nice)  # once serving: a refused start stays one line
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sdnotify.notify("READY=1")
        await stop.wait()
        sdnotify.notify("STOPPING=1")
        log.info("shutting down; running VMs keep running and are re-adopted at the next start")
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=2.0)
        if lis.socket_path and os.path.exists(lis.socket_path):
            os.unlink(lis.socket_path)
    finally:
        if stop_metrics:
            stop_metrics()
        if controller.claims is not None:
            controller.claims.close()
    return 0


def _peer_tls(args: argparse.Namespace) -> Any:
    """This agent's TLS files, read once, for dialling migration targets (None without TLS)."""
    from kvmplat.agent.registry.peer import PeerTls

    if not (args.tls_cert and args.tls_key and args.tls_client_ca):
        return None
    with open(args.tls_cert, "rb") as c, open(args.tls_key, "rb") as k, open(args.tls_client_ca, "rb") as a:
        return PeerTls(cert=c.read(), key=k.read(), ca=a.read())


async def _controller(args: argparse.Namespace) -> Controller:
    """The controller with this host's platforms, limits (flags, else the machine's size) and runner template."""
    from kvmplat.agent.api.validate import Limits
    from kvmplat.agent.kvm.fds import Kvm
    from kvmplat.agent.kvm.ioctls import Cap
    from kvmplat.agent.registry.controller import Controller
    from kvmplat.agent.registry.hostview import Platforms
    from kvmplat.agent.registry.runnerlink import TemplateClient
    from kvmplat.agent.registry.store import Store

    store = Store(args.state_dir)
    with Kvm() as kvm:
        platforms = Platforms(kvm, args.state_dir, args.max_level)
        per_vm_vcpus = min(kvm.check_extension(Cap.MAX_VCPUS) or kvm.check_extension(Cap.NR_VCPUS) or 1, 254)
    image_dirs = tuple(args.image_dir or [os.environ.get("KVMPLAT_IMAGE_DIR") or DEFAULT_IMAGE_DIR])
    total_mem = args.max_memory_mib or max(256, _host_memory_mib() - HEADROOM_MIB)
    total_vcpus = args.max_vcpus or VCPUS_PER_CORE * (os.cpu_count() or 1)
    limits = Limits(max_vcpus=min(per_vm_vcpus, total_vcpus), max_memory_mib=total_mem, image_dirs=image_dirs)
    template = await TemplateClient.start(args.state_dir)
    return Controller(store, template, platforms, limits, total_mem, total_vcpus)


def _grpc_server(interceptors: list[Any], controller: Controller) -> tuple[Any, Any, str]:
    """The gRPC server (not yet listening) with the Agent, health and reflection services; returns it, the health
    servicer and the Agent service's full name."""
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection
    from kvmplat.agent.api.servicer import AgentServicer, DecodeGuard, add_to_server
    from kvmplat.v1 import agent_pb2

    server = grpc.aio.server(
        interceptors=[*interceptors, DecodeGuard()],  # roles first: a stranger's bytes are not even parsed for it
        options=[("grpc.max_receive_message_length", MAX_RECEIVE), ("grpc.max_send_message_length", MAX_SEND)],
    )
    add_to_server(AgentServicer(controller), server)  # the generated registration, with events sent pre-serialized
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name
    reflection.enable_server_reflection([service, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return server, health_servicer, service


def main(argv: list[str] | None = None) -> None:
    """Entry point of kvmplat-agent: no traceback for what an operator must fix (flags, a busy port or state
    directory, a host without KVM): one line and exit 2."""
    args = parse_args(argv)
    _setup_logging(args.log_format, args.log_level)
    from kvmplat.agent.api.exclusive import InUse
    from kvmplat.agent.errors import KvmplatError
    from kvmplat.agent.registry.guestmem import keep_freed_memory

    keep_freed_memory()

    try:
        code = asyncio.run(serve(args))
    except (ValueError, KvmplatError, InUse, OSError, RuntimeError) as e:
        _fatal(args, _one_line(e))
        code = 2
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)


def _one_line(e: BaseException) -> str:
    """An error as one line; an OSError names its file and says what the errno means."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


def _fatal(args: argparse.Namespace, text: str) -> None:
    if args.log_format == "json":
        log.error("kvmplat-agent: %s", text)  # the journal stays one JSON object a line
    else:
        print(f"kvmplat-agent: {text}", file=sys.stderr)
