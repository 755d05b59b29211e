"""Placement over real agents: three or more on unix sockets, and on TCP between network namespaces made here,
with mutual TLS and roles (the scheduler holds a `reader` certificate; a certificate the agents do not name is
refused). Each agent has its own --max-memory-mib, so the scoring (most free memory first) and the memory
rejections are visible.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import AgentFactory
from kvmplat.client import place
from kvmplat.client.agent import TlsFiles
from kvmplat.v1 import agent_pb2 as pb
from sched_harness import KVMPLAT, Netns, agent_tls_flags, make_pki, namespaces, netns_unavailable, tls_files

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]


def spec(memory_mib: int, name: str = "big") -> pb.VmSpec:
    """A loop VM of `memory_mib`."""
    return pb.VmSpec(name=name, vcpus=1, memory_mib=memory_mib, boot=pb.BootSpec(builtin="loop"))


def test_unix_agents_most_free_memory_wins_and_every_rejection_is_explained(
    agents: AgentFactory, tmp_path: Path
) -> None:
    a = [agents(f"unix://{tmp_path}/a{i}.sock", "--max-memory-mib", str(64 * i)) for i in (1, 2, 3, 4)]
    addrs = [x.address for x in a]
    result = place(spec(150), [*addrs, f"unix://{tmp_path}/nobody.sock"], timeout=5)
    assert result.chosen == addrs[3]
    assert [o.agent for o in result.candidates] == [addrs[3], addrs[2]]
    reasons = {r.agent: r.reason for r in result.rejected}
    assert reasons[addrs[0]] == "needs 150 MiB of memory, 64 MiB free of 64"
    assert reasons[addrs[1]] == "needs 150 MiB of memory, 128 MiB free of 128"
    assert reasons[f"unix://{tmp_path}/nobody.sock"].startswith("unreachable: ")
    a[3].create("filler", memory_mib=100)  # 256 -> 156 free: now the 192 MiB agent has most room
    assert place(spec(50), addrs, timeout=5).chosen == addrs[2]


def test_platform_refusal_is_a_reason(agents: AgentFactory, tmp_path: Path) -> None:
    a = [agents(f"unix://{tmp_path}/a{i}.sock", "--max-memory-mib", "256") for i in range(3)]
    s = spec(16)
    s.platform.compat = "x86-64-v2" if a[0].client.capabilities().arch.startswith("ppc") else "power9"  # other arch
    result = place(s, [x.address for x in a], timeout=5)
    assert result.chosen is None and len(result.rejected) == 3
    assert all(r.reason.startswith("platform refused: ") for r in result.rejected), result.rejected


def test_cli_json_exit_codes_and_ties(agents: AgentFactory, tmp_path: Path) -> None:
    a = [agents(f"unix://{tmp_path}/a{i}.sock", "--max-memory-mib", "128") for i in range(3)]
    addrs = [x.address for x in a]
    (tmp_path / "big.json").write_text('{"name":"big","vcpus":1,"memory_mib":100,"boot":{"builtin":"loop"}}')
    (tmp_path / "huge.json").write_text('{"name":"huge","vcpus":1,"memory_mib":1000,"boot":{"builtin":"loop"}}')

    def run(spec_file: str, agent_list: str) -> subprocess.CompletedProcess[str]:
        argv = [KVMPLAT, "place", "--spec", str(tmp_path / spec_file), "--agents", agent_list, "--json"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    ok = run("big.json", ",".join(reversed(addrs)))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["chosen"] == min(addrs)  # equal room: the smallest address, whatever the order
    full = run("huge.json", ",".join(addrs))
    assert full.returncode == 1 and "no agent can take VM 'huge'" in full.stderr
    assert json.loads(full.stdout)["chosen"] is None
    assert [r["agent"] for r in json.loads(full.stdout)["rejected"]] == addrs
    assert run("big.json", "").returncode == 2
    assert run("big.json", "tcp://no-port").returncode == 2
    assert run("missing.json", addrs[0]).returncode == 2


@pytest.fixture
def four_namespaces() -> Iterator[list[Netns]]:
    """Four network namespaces joined to the host (they need root, i.e. CAP_SYS_ADMIN, and iproute2)."""
    why = netns_unavailable()
    if why:
        pytest.skip(f"cannot create network namespaces: {why}")
    with namespaces(4) as ns:
        yield ns


def test_tcp_mtls_agents_in_network_namespaces(
    four_namespaces: list[Netns], agents: AgentFactory, tmp_path: Path
) -> None:
    ns = four_namespaces  # set up before `agents`, so torn down after the agents in them have stopped
    pki = make_pki(tmp_path, [n.ip for n in ns])
    authz = tmp_path / "authz.yaml"
    authz.write_text("operator: operator\nreader: reader\n")
    flags = agent_tls_flags(pki, authz)
    up = [
        agents(f"tcp://{n.ip}:7443", *flags, "--max-memory-mib", str(mem), netns=n.name, tls=tls_files(pki, "operator"))
        for n, mem in zip(ns[:3], (96, 512, 256), strict=True)
    ]
    addrs = [a.address for a in up]
    refused = f"tcp://{ns[3].ip}:7443"  # a namespace with nobody listening
    dark = f"tcp://{ns[3].host_ip[:-1]}9:7443"  # an address nothing answers on: connect must time out
    # that placement returns at all with `dark` silent is its bound (the unit tests show it never waits past it)
    result = place(spec(128), [*addrs, refused, dark], timeout=2, tls=tls_files(pki, "reader"))
    assert result.chosen == addrs[1]
    assert [o.agent for o in result.candidates] == [addrs[1], addrs[2]]
    reasons = {r.agent: r.reason for r in result.rejected}
    assert reasons[addrs[0]] == "needs 128 MiB of memory, 96 MiB free of 96"
    assert reasons[refused].startswith("unreachable: ") and reasons[dark].startswith("unreachable: ")

    up[1].create("filler", memory_mib=300)  # as operator
    pem = [f"--tls-{k}={pki / f}" for k, f in (("ca", "ca.pem"), ("cert", "reader.pem"), ("key", "reader.key"))]
    argv = [KVMPLAT, *pem, "--timeout", "5", "place", "--spec", str(tmp_path / "s.json"), "--agents", ",".join(addrs)]
    (tmp_path / "s.json").write_text('{"name":"big","vcpus":1,"memory_mib":128,"boot":{"builtin":"loop"}}')
    out = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["chosen"] == addrs[2]

    stranger = place(spec(16), addrs, timeout=5, tls=tls_files(pki, "stranger"))  # CA-signed, but no role
    assert stranger.chosen is None
    assert all(r.reason.startswith("refused: PERMISSION_DENIED") for r in stranger.rejected), stranger.rejected
    no_cert = place(spec(16), addrs[:1], timeout=2, tls=TlsFiles(str(pki / "ca.pem")))
    assert no_cert.rejected[0].reason.startswith("unreachable: ")  # the TLS handshake fails: UNAVAILABLE


def test_labels_cli_from_a_live_agent(agents: AgentFactory, tmp_path: Path) -> None:
    a = agents(f"unix://{tmp_path}/a.sock")
    env = {"KVMPLAT_AGENT": a.address, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([KVMPLAT, "labels"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert all(line.startswith("kvmplat.io/") and "=" in line for line in lines)
    keys = [line.split("=", 1)[0] for line in lines]
    assert keys == sorted(keys)  # sorted by label name
    assert f"kvmplat.io/arch={a.client.capabilities().arch}" in lines
    nfd = tmp_path / "features.d" / "kvmplat"
    nfd.parent.mkdir()
    out = subprocess.run([KVMPLAT, "labels", "--nfd-file", str(nfd), "--json"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    body = [line for line in nfd.read_text().splitlines() if not line.startswith("#")]
    assert body == lines and json.loads(out.stdout) == dict(line.split("=", 1) for line in lines)
