"""`kvmplat labels [--nfd-file PATH] [--json]` and `kvmplat place --spec F --agents A,B,C [--json]`.

`place` exits 0 when an agent was chosen, 1 when none can take the spec (each reason in the output), 2 for usage
errors (bad spec file, no or malformed agent addresses). The global --timeout bounds each call to each agent and
--tls-* apply to every agent.
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


def _place(ctx: Context) -> int:
    """kvmplat place."""
    from kvmplat.client.agent import TlsFiles
    from kvmplat.client.scheduling.ask_agents import place
    from kvmplat.client.specfile import load_spec

    a = ctx.args
    spec = load_spec(a.spec)
    agents = _agents(a.agents)
    if not a.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, not {a.timeout}")
    tls_args = (getattr(a, "tls_ca", None), getattr(a, "tls_cert", None), getattr(a, "tls_key", None))
    result = place(spec, agents, timeout=a.timeout, tls=TlsFiles(*tls_args) if any(tls_args) else None)
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
    p.add_argument("--agents", required=True, metavar="A,B,C", help="agent addresses, comma-separated")
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"chosen", "rejected": [{"agent", "reason"}], "candidates": [{"agent", "memoryFreeMib", '
        '"vcpusFree"}]} (protobuf JSON style)',
    )
