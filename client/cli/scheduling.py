"""`kvmplat labels [--nfd-file PATH] [--json]` and `kvmplat place --spec F (--agents A,B,C | --placement URL) [--json]`.

`place --agents` only chooses; `place --placement` chooses through OpenStack Placement and creates (and starts) the
VM on the chosen agent (client/scheduling/placement_engine.py). Both exit 0 when an agent was chosen, 1 when none
can take the spec (each reason in the output), 2 for usage errors (bad spec file, no or malformed agent addresses)
or a Placement that cannot be asked. The global --timeout bounds each call to each agent and to Placement; --tls-*
apply to every agent.
"""

from __future__ import annotations

import json

from kvmplat.client.cli.main import EXIT_OK, EXIT_REFUSED, Commands, Context, UsageError

__all__ = ["register"]


def _labels(ctx: Context) -> int:
    """kvmplat labels."""
    from kvmplat.client.scheduling.labels import format_nfd, labels_from_caps, write_nfd_file

    labels = labels_from_caps(ctx.client().capabilities())
    if ctx.args.nfd_file:
        try:
            write_nfd_file(ctx.args.nfd_file, format_nfd(labels, ctx.address()))
        except OSError as e:
            raise UsageError(f"--nfd-file {ctx.args.nfd_file}: cannot write it: {e.strerror or e}") from None
    if ctx.args.json:
        ctx.print(json.dumps(labels, indent=2))
    elif not ctx.args.nfd_file:
        ctx.print("".join(f"{k}={v}\n" for k, v in labels.items()).rstrip("\n"))
    return EXIT_OK


def _agents(text: str) -> list[str]:
    """The comma-separated addresses of --agents (each checked), in the order given."""
    from kvmplat.client.agent import AddressError, grpc_target

    agents = [a.strip() for a in text.split(",") if a.strip()]
    if not agents:
        raise UsageError("--agents needs at least one address (A,B,C)")
    for a in agents:
        try:
            grpc_target(a)
        except AddressError as e:
            raise UsageError(str(e)) from None
    return agents


def _placement_url(url: str) -> str:
    """--placement URL, checked: http(s)://HOST[:PORT][/PATH]."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--placement {url!r} is not a Placement URL (http://HOST:PORT[/PATH])")
    return url


def _place(ctx: Context) -> int:
    """kvmplat place."""
    from kvmplat.client.agent import TlsFiles
    from kvmplat.client.scheduling.ask_agents import place
    from kvmplat.client.specfile import load_spec

    a = ctx.args
    spec = load_spec(a.spec)
    if not a.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, not {a.timeout}")
    tls_args = (getattr(a, "tls_ca", None), getattr(a, "tls_cert", None), getattr(a, "tls_key", None))
    tls = TlsFiles(*tls_args) if any(tls_args) else None
    if a.placement:
        from kvmplat.client.scheduling.placement_engine import place_on_placement

        token = a.placement_token or ctx.env.get("KVMPLAT_PLACEMENT_TOKEN") or "admin"
        result = place_on_placement(spec, _placement_url(a.placement), token=token, timeout=a.timeout, tls=tls)
    else:
        result = place(spec, _agents(a.agents), timeout=a.timeout, tls=tls)
    if a.json:
        ctx.print(json.dumps(result.to_json(), indent=2))
    else:
        for o in result.candidates:
            mark = "chosen" if o.agent == result.chosen else "fits"
            ctx.print(f"{mark}: {o.agent} ({o.memory_free_mib} MiB, {o.vcpus_free} vCPUs free)")
        for r in result.rejected:
            ctx.print(f"rejected: {r.agent}: {r.reason}")
    if result.chosen is None:
        ctx.warn(f"no agent can take VM {spec.name!r}")
        return EXIT_REFUSED
    return EXIT_OK


def register(commands: Commands) -> None:
    """Adds `labels` and `place`."""
    p = commands.add("labels", _labels, "Kubernetes node labels from the agent's capabilities (NFD features file)")
    p.add_argument("--nfd-file", metavar="PATH", help="write node-feature-discovery's local features file atomically")
    p.add_argument("--json", action="store_true", help="print the labels as one JSON object")
    p = commands.add("place", _place, "choose the agent with most room that can run a spec; explain the others")
    p.add_argument("--spec", required=True, metavar="FILE", help="VmSpec as protobuf JSON (as for create)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--agents", metavar="A,B,C", help="agent addresses, comma-separated (choose only)")
    where.add_argument("--placement", metavar="URL", help="OpenStack Placement: choose there, create the VM (started)")
    p.add_argument(
        "--placement-token", metavar="TOKEN", help="Keystone token (default $KVMPLAT_PLACEMENT_TOKEN, else 'admin')"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"chosen", "rejected": [{"agent", "reason"}], "candidates": [{"agent", "memoryFreeMib", '
        '"vcpusFree"}]} (protobuf JSON style)',
    )
