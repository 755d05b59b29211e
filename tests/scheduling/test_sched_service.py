"""Operating the agent as a host daemon: the systemd unit in deploy/, `--log-format json`, `--version`, and the
README documenting every flag `kvmplat-agent --help` lists."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import AgentFactory
from kvmplat.agent.api.main import parse_args
from sched_harness import AGENT

ROOT = Path(__file__).parents[2]
UNIT = ROOT / "deploy" / "kvmplat-agent.service"


def unit_settings() -> dict[str, list[str]]:
    """Every `Key=value` of the unit (a key may repeat), comments and section headers left out."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_is_a_notify_service_with_its_socket_under_run_kvmplat() -> None:
    u = unit_settings()
    assert u["Type"] == ["notify"]  # the agent sends READY=1 once it serves (agent/api/sdnotify.py)
    assert u["RuntimeDirectory"] == ["kvmplat"] and u["StateDirectory"] == ["kvmplat"]
    assert u["DeviceAllow"] == ["/dev/kvm rw"] and u["DevicePolicy"] == ["closed"]
    assert u["KillMode"] == ["process"]  # VMs outlive an agent restart
    argv = shlex.split(u["ExecStart"][0].replace("$KVMPLAT_AGENT_ARGS", ""))
    assert argv[0].endswith("/kvmplat-agent")
    args = parse_args(argv[1:])  # every flag the unit passes exists
    assert args.listen == "unix:///run/kvmplat/agent.sock"
    assert args.state_dir == "/var/lib/kvmplat" and args.log_format == "json"


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit = tmp_path / UNIT.name  # ExecStart must exist: point it at this checkout's agent
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/kvmplat-agent", AGENT))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    ours = [line for line in (out.stdout + out.stderr).splitlines() if UNIT.name in line]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


def test_version() -> None:
    out = subprocess.run([AGENT, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.strip() == f"kvmplat-agent {importlib.metadata.version('kvmplat')}"


def test_readme_documents_every_agent_flag() -> None:
    helptext = subprocess.run([AGENT, "--help"], capture_output=True, text=True, timeout=60).stdout
    flags = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", helptext.split("options:", 1)[1]))
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The agent: `kvmplat-agent`", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(--?[a-z][a-z-]*)", section))
    assert {"--listen", "--metrics-listen", "--log-format", "--version"} <= flags
    assert flags <= documented, f"README.md does not document {sorted(flags - documented)}"


@pytest.mark.e2e
@pytest.mark.kvm
def test_json_logs_are_one_object_a_line(agents: AgentFactory, tmp_path: Path) -> None:
    a = agents(f"unix://{tmp_path}/a.sock", "--log-format", "json", "--log-level", "debug")
    a.create("logged")
    a.client.stop_vm("logged")
    a.client.destroy_vm("logged")
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(timeout=30) == 0
    lines = a.log_path.read_text().splitlines()
    assert len(lines) >= 2, lines  # serving ..., shutting down
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict) and {"time", "level", "logger", "msg"} <= set(record), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]), record["time"]
    assert any(json.loads(line)["msg"].startswith("kvmplat-agent serving on ") for line in lines)


def test_json_logs_also_for_a_refused_start(tmp_path: Path) -> None:
    argv = [AGENT, "--listen", "tcp://127.0.0.1:1", "--state-dir", str(tmp_path / "s"), "--log-format", "json"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)  # TCP without TLS nor --insecure
    assert out.returncode == 2
    records = [json.loads(line) for line in out.stderr.splitlines()]
    assert records and records[-1]["level"] == "error" and "kvmplat-agent: " in records[-1]["msg"]
