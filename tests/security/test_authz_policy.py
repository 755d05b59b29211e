"""The --authz file and the role table, without an agent: what parses, what is refused (naming the line), which
role each method needs (unclassified methods need operator), and the refusal messages."""

from __future__ import annotations

import pytest
from kvmplat.agent.api.authz import READER_METHODS, Role, parse_policy, refusal, required_role
from kvmplat.v1 import agent_pb2

AGENT = agent_pb2.DESCRIPTOR.services_by_name["Agent"]
READS = {"GetCapabilities", "CheckPlatform", "GetVm", "ListVms", "WatchEvents", "WatchEventBatches"}


def test_flat_mapping_with_comments_and_quotes() -> None:
    text = "---\n# roles\noperator: operator\n'sched.example:8443': reader  # scheduler\n\"x y\": 'operator'\n\n"
    assert parse_policy(text) == {"operator": Role.operator, "sched.example:8443": Role.reader, "x y": Role.operator}


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("a: admin\n", "role 'admin'"),
        ("a: reader\na: operator\n", "named twice"),
        ("roles:\n  a: reader\n", "line 1"),
        ("a: &x reader\n", "not a plain name"),
        ("*x: reader\n", "not a plain name"),
        ("- a\n", "expected `common-name: role`"),
        ("a: !!python/object reader\n", "not a plain name"),
        ("'a: reader\n", "unterminated"),
        ("a:\n", "not a plain name"),
    ],
)
def test_anything_else_is_refused_naming_the_line(text: str, phrase: str) -> None:
    with pytest.raises(ValueError, match="line") as info:
        parse_policy(text)
    assert phrase in str(info.value)


def test_every_agent_method_is_classified_and_readers_only_read() -> None:
    methods = {m.name: f"/{AGENT.full_name}/{m.name}" for m in AGENT.methods}
    assert {f"/{AGENT.full_name}/{m}" for m in READS} == READER_METHODS
    for name, full in methods.items():
        assert required_role(full) is (Role.reader if name in READS else Role.operator), name
    assert required_role("/grpc.health.v1.Health/Check") is Role.reader
    assert required_role("/kvmplat.v1.Agent/SomethingNew") is Role.operator
    assert required_role("/other.Service/Get") is Role.operator


def test_refusals_name_the_role_needed() -> None:
    policy = {"op": Role.operator, "rd": Role.reader}
    create, listing = "/kvmplat.v1.Agent/CreateVm", "/kvmplat.v1.Agent/ListVms"
    assert refusal(policy, create, "op") is None and refusal(policy, listing, "rd") is None
    assert "needs role operator" in str(refusal(policy, create, "rd"))
    assert "not named" in str(refusal(policy, listing, "who"))
    assert "no certificate" in str(refusal(policy, listing, None))
