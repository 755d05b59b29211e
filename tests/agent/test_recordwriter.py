"""The record writer: writes leave the caller at once, land in order, and coalesce per VM while they wait."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from kvmplat.agent.registry.recordwriter import RecordWriter
from kvmplat.agent.registry.store import Store


class GatedStore(Store):
    """A real store on disk whose first write waits for `gate`, so that later writes queue up behind it."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls: list[tuple[str, str, Any, bool]] = []
        self.in_flight: list[str] = []
        self.overlaps: list[str] = []  # VMs written by two threads at once
        self.lock = threading.Lock()

    def save(self, name: str, record: dict[str, Any], durable: bool = True) -> None:
        with self.lock:
            if name in self.in_flight:
                self.overlaps.append(name)
            self.in_flight.append(name)
        self.started.set()
        self.gate.wait(10)
        with self.lock:
            self.calls.append(("save", name, record.get("v"), durable))
            self.in_flight.remove(name)
        super().save(name, record, durable)

    def delete_record(self, name: str) -> None:
        self.calls.append(("delete", name, None, False))
        super().delete_record(name)


def test_waiting_writes_of_a_vm_coalesce_to_its_newest_durable_first(tmp_path: Path) -> None:
    store = GatedStore(str(tmp_path))
    writer = RecordWriter(store, threads=1)
    first = writer.save("a", {"name": "a", "spec": {}, "v": 1})
    assert store.started.wait(5)  # the writer is inside the first write
    futures = [
        writer.save("b", {"name": "b", "spec": {}, "v": 1}),
        writer.save("a", {"name": "a", "spec": {}, "v": 2}),
        writer.save("a", {"name": "a", "spec": {}, "v": 3}),
        writer.delete("b"),
        writer.save("c", {"name": "c", "spec": {}, "v": 1}, durable=True),
    ]
    assert not first.done()
    store.gate.set()
    for f in [first, *futures]:
        f.result(5)
    writer.close()
    assert store.calls == [
        ("save", "a", 1, False),
        ("save", "c", 1, True),  # a caller waits for a durable write: it goes before the others
        ("save", "a", 3, False),
        ("delete", "b", None, False),
    ]
    assert {r["name"]: r["v"] for r in store.load_all()} == {"a": 3, "c": 1}


def test_a_write_someone_waits_for_goes_first_without_an_fsync(tmp_path: Path) -> None:
    store = GatedStore(str(tmp_path))
    writer = RecordWriter(store, threads=1)
    writer.save("x", {"name": "x", "spec": {}, "v": 0})
    assert store.started.wait(5)
    writer.save("y", {"name": "y", "spec": {}, "v": 1})
    waited = writer.save("z", {"name": "z", "spec": {}, "v": 1}, first=True)  # DestroyVm's mark
    store.gate.set()
    waited.result(5)
    writer.close()
    assert [c[1:] for c in store.calls] == [("x", 0, False), ("z", 1, False), ("y", 1, False)]


def test_a_coalesced_write_stays_durable(tmp_path: Path) -> None:
    store = GatedStore(str(tmp_path))
    writer = RecordWriter(store, threads=1)
    writer.save("x", {"name": "x", "spec": {}, "v": 0})
    assert store.started.wait(5)
    writer.save("y", {"name": "y", "spec": {}, "v": 1}, durable=True)
    last = writer.save("y", {"name": "y", "spec": {}, "v": 2})
    store.gate.set()
    last.result(5)
    writer.close()
    assert store.calls[-1] == ("save", "y", 2, True)


def test_vms_are_written_in_parallel_but_one_vm_never_twice_at_once(tmp_path: Path) -> None:
    store = GatedStore(str(tmp_path))
    writer = RecordWriter(store, threads=4)
    futures = [writer.save("a", {"name": "a", "spec": {}, "v": 1})]
    assert store.started.wait(5)
    futures += [writer.save("a", {"name": "a", "spec": {}, "v": 2}), writer.save("b", {"name": "b", "spec": {}})]
    for _ in range(100):  # b's write starts beside a's first one; a's second waits for it
        with store.lock:
            if store.in_flight == ["a", "b"]:
                break
        threading.Event().wait(0.02)
    assert store.in_flight == ["a", "b"]
    store.gate.set()
    for f in futures:
        f.result(5)
    writer.close()
    assert store.overlaps == []
    assert [c[2] for c in store.calls if c[1] == "a"] == [1, 2]


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    store = GatedStore(str(tmp_path))
    writer = RecordWriter(store)
    for i in range(20):
        writer.save(f"vm{i}", {"name": f"vm{i}", "spec": {}, "v": i})
    store.gate.set()
    writer.close()
    assert len(store.load_all()) == 20
    with pytest.raises(RuntimeError, match="closed"):
        writer.save("late", {"name": "late", "spec": {}})


def test_a_failed_write_is_reported_to_its_callers_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(str(tmp_path))
    writer = RecordWriter(store)
    store.vms.rename(tmp_path / "vms.moved")  # tests run as root, which ignores modes: make the path a file
    store.vms.write_text("not a directory")
    done = writer.save("a", {"name": "a", "spec": {}})
    with pytest.raises(OSError):
        done.result(5)
    writer.close()
    assert "VM a: cannot write its record" in caplog.text
