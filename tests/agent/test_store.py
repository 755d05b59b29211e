"""agent/registry/store.py: records are written atomically (a failed write leaves the old record whole), and a
corrupt or half-written record is reported and skipped while the others load."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from kvmplat.agent.registry.store import Store


def record(name: str, **extra: Any) -> dict[str, Any]:
    """A minimal VM record."""
    return {"name": name, "spec": {"name": name, "vcpus": 1}, "socket": f"/run/{name}.sock", **extra}


def test_save_then_load(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.save("a", record("a", pid=7))
    store.save("b.c", record("b.c"))
    assert store.load_all() == [record("a", pid=7), record("b.c")]
    path = store.vms / "a.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert sorted(p.name for p in store.vms.iterdir()) == ["a.json", "b.c.json"]  # no temporary files left


def test_save_replaces_the_record(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.save("a", record("a", state="CREATED"))
    store.save("a", record("a", state="RUNNING"))
    assert [r["state"] for r in store.load_all()] == ["RUNNING"]


def test_a_write_that_fails_midway_leaves_the_old_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(str(tmp_path))
    store.save("a", record("a", state="CREATED"))

    def torn_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", torn_fsync)
    with pytest.raises(OSError):
        store.save("a", record("a", state="RUNNING", filler="x" * 100_000))
    monkeypatch.undo()
    assert [r["state"] for r in store.load_all()] == ["CREATED"]
    assert json.loads((store.vms / "a.json").read_text())["state"] == "CREATED"


def test_corrupt_and_half_written_records_are_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(str(tmp_path))
    store.save("good1", record("good1"))
    store.save("good2", record("good2"))
    whole = json.dumps(record("torn"))
    (store.vms / "torn.json").write_text(whole[: len(whole) // 2])
    (store.vms / "list.json").write_text("[1, 2]")
    (store.vms / "nospec.json").write_text(json.dumps({"name": "nospec"}))
    (store.vms / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (store.vms / "empty.json").write_text("")
    (store.vms / "left.json.tmp").write_text("{")  # a write the agent never renamed
    with caplog.at_level(logging.ERROR, logger="kvmplat.agent.registry.store"):
        loaded = store.load_all()
    assert [r["name"] for r in loaded] == ["good1", "good2"]
    reported = " ".join(r.getMessage() for r in caplog.records)
    for bad in ("torn", "list", "nospec", "binary", "empty"):
        assert f"{bad}.json" in reported
    assert "left.json.tmp" not in reported


def test_delete_removes_record_and_socket(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.save("a", record("a"))
    Path(store.socket_path("a")).write_text("")
    store.delete_record("a")
    store.unlink_socket("a")
    store.delete_record("never-existed")
    store.unlink_socket("never-existed")
    assert store.load_all() == [] and not Path(store.socket_path("a")).exists()


def test_records_with_unusable_fields_are_reported_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    from kvmplat.agent.registry.controller import ADOPT_SEQ_GAP, SEQ_BLOCK, _record_from

    good = {"name": "a", "spec": {"name": "a", "vcpus": 1}, "socket": "/run/a.sock"}
    bad = [
        {**good, "pid": []},
        {**good, "created": "yesterday"},
        {**good, "state": "ASLEEP"},
        {**good, "name": "b"},  # the file names another VM than its spec
        {**good, "spec": {"name": "../a"}, "name": "../a"},
        {**good, "spec": {"vcpus": "many"}},
        {k: v for k, v in good.items() if k != "socket"},
    ]
    with caplog.at_level(logging.ERROR, logger="kvmplat.agent"):
        assert [_record_from(d) for d in bad] == [None] * len(bad)
    assert len(caplog.records) == len(bad)
    rec = _record_from({**good, "last_seq": 10, "state": "RUNNING"})
    assert rec is not None and rec.seq_reserved == 10 + ADOPT_SEQ_GAP  # an old record: past its last known number
    rec = _record_from({**good, "last_seq": 10, "seq_reserved": 5 * SEQ_BLOCK})
    assert rec is not None and rec.seq_reserved == 5 * SEQ_BLOCK
