"""agent/runner/wire.py: every message survives encode → decode unchanged, errors keep their kind and field
violations, and a line that is not one of the module's messages is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kvmplat.agent import errors
from kvmplat.agent.registry.lifecycle import Event, IllegalTransition, State
from kvmplat.agent.runner.wire import (
    Accepted,
    Arrival,
    Arrived,
    BootSource,
    Call,
    ConsoleText,
    DirtyPages,
    ExitReport,
    Failure,
    FinalCopy,
    Frozen,
    Hello,
    Loaded,
    LoadState,
    MemoryFd,
    Note,
    Reply,
    RunnerConfig,
    RunnerEvent,
    RunnerStats,
    Spawn,
    Spawned,
    SpawnReply,
    StateChange,
    StateReply,
    ThrottleTo,
    decode,
    encode,
    error_of,
    failure_of,
)

text = st.text(max_size=20)
ints = st.integers(min_value=0, max_value=2**63)
configs = st.builds(
    RunnerConfig,
    name=text,
    vcpus=ints,
    memory_mib=ints,
    socket=text,
    boot=st.builds(BootSource, text, text, text, text),
    cpuid=st.none() | st.lists(st.tuples(*[ints] * 7), max_size=3).map(tuple),
    image_dirs=st.none() | st.lists(text, max_size=3).map(tuple),
)
bodies = st.one_of(
    st.builds(StateChange, text, text, text),
    st.builds(ConsoleText, text),
    st.builds(ExitReport, text, ints, text, text, st.dictionaries(text, ints, max_size=3), text),
)
stats = st.builds(
    RunnerStats,
    ints,
    ints,
    ints,
    ints,
    st.lists(st.tuples(ints, ints), max_size=4).map(tuple),
    ints,
    st.dictionaries(text, st.floats(allow_nan=False), max_size=3),
)
# a frozen machine state is a JSON document: nested objects and lists of any JSON values
documents = st.dictionaries(
    text,
    st.recursive(
        st.none() | st.booleans() | ints | text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text.filter(lambda k: k != "t"), inner, max_size=3),
        max_leaves=8,
    ),
    max_size=4,
).filter(lambda d: "t" not in d)
rows = st.lists(st.tuples(*[ints] * 7), max_size=3).map(tuple)
move_results = st.one_of(
    st.builds(MemoryFd, ints, ints, ints, rows),
    st.builds(Frozen, documents, ints, st.dictionaries(text, st.floats(allow_nan=False), max_size=2)),
    st.builds(DirtyPages, text),
    st.builds(FinalCopy, text, documents, ints),
    st.builds(Loaded, st.lists(text, max_size=3).map(tuple)),
    st.builds(Arrived, text, ints),
)
move_args = st.one_of(
    st.builds(Note, text),
    st.builds(ThrottleTo, ints),
    st.builds(LoadState, documents, st.dictionaries(text, st.floats(allow_nan=False), max_size=2)),
    st.builds(Arrival, ints, st.booleans(), text),
)
failures = st.builds(Failure, text, text, st.lists(st.tuples(text, text), max_size=3).map(tuple))
messages = st.one_of(
    configs.map(Spawn),
    st.builds(Spawn, configs, ints),
    st.builds(Spawned, ints),
    st.builds(SpawnReply, ints, st.builds(Spawned, ints) | failures),
    st.builds(Call, ints, text, ints, text, st.none() | move_args),
    st.builds(Reply, ints, move_results),
    st.builds(RunnerEvent, ints, st.floats(allow_nan=False, allow_infinity=False), bodies),
    st.builds(
        Reply,
        ints,
        st.none() | st.builds(Hello, text, text, ints, ints) | st.builds(StateReply, text, text) | stats,
        st.none() | failures,
    ),
    st.builds(Reply, ints, st.builds(Accepted, ints)),
)


@given(messages)
def test_every_message_survives_the_wire(msg: object) -> None:
    line = encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == msg


@pytest.mark.parametrize(
    "line", [b"{}", b"[]", b"3", b'{"t": "Nonsense"}', b'{"t": "Spawned"}', b'{"t": "Spawned", "pid": 1, "x": 2}']
)
def test_a_line_that_is_no_message_is_refused(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode(line)


def test_invalid_argument_keeps_its_field_violations() -> None:
    sent = errors.InvalidArgument("two fields", [("spec.vcpus", "0"), ("spec.memory_mib", "too big")])
    got = error_of(decode(encode(failure_of(sent))))
    assert type(got) is errors.InvalidArgument
    assert str(got) == "two fields" and got.violations == sent.violations


@pytest.mark.parametrize(
    ("sent", "kind"),
    [
        (errors.NotFound("n"), errors.NotFound),
        (errors.FailedPrecondition("f"), errors.FailedPrecondition),
        (errors.PlatformRefused("compat", "power10", "too new"), errors.FailedPrecondition),
        (IllegalTransition("v", State.STOPPED, Event.PAUSE), errors.FailedPrecondition),
        (errors.KvmError("KVM_RUN", "vcpu", 4), errors.HostError),
        (errors.Unavailable("u"), errors.Unavailable),
        (errors.ResourceExhausted("r"), errors.ResourceExhausted),
        (errors.KvmplatError("base"), errors.HostError),
        (RuntimeError("boom"), errors.HostError),
    ],
)
def test_errors_cross_as_the_nearest_kind_with_their_message(sent: BaseException, kind: type) -> None:
    got = error_of(decode(encode(failure_of(sent))))
    assert type(got) is kind
    assert str(sent) in str(got)


def test_an_unknown_kind_is_a_host_error() -> None:
    got = error_of(Failure("FromTheFuture", "m"))
    assert type(got) is errors.HostError and str(got) == "m"
