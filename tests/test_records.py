"""Append-only JSONL records: torn last lines, resume, no duplicate keys, file:line errors."""

from __future__ import annotations

import json
import logging
import os

import pytest

from deliberate.errors import DeliberateError
from deliberate.records import RecordWriter, done_keys, load_records, write_json_atomic
from deliberate.types import SampleRecord


def rec(pid="p0", strategy="sample", index=0, text="x\ny", correct=True):
    return SampleRecord(problem_id=pid, strategy=strategy, index=index, seed=0, text=text, answer="3",
                        gold="3", correct=correct, prompt_tokens=5, completion_tokens=len(text))


def test_roundtrip_and_done_keys(tmp_path):
    path = tmp_path / "sub" / "records.jsonl"
    rows = [rec(index=j, text=f"t{j}\n\u00e9\ud800") for j in range(3)] + [rec("p1", "greedy", 0)]
    with RecordWriter(path) as w:
        assert w.append(rows[:2]) == 2
        assert w.append(rows[2:]) == 2
    assert load_records(path) == rows
    assert done_keys(path) == {r.key for r in rows}
    assert path.read_bytes().count(b"\n") == 4  # one line per record, newlines inside text escaped
    assert load_records(tmp_path / "missing.jsonl") == [] and done_keys(tmp_path / "missing.jsonl") == set()


def test_partial_last_line_is_cut_and_resume_appends(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as w:
        w.append([rec(index=0), rec(index=1)])
    full = path.read_bytes()
    torn = json.dumps(rec(index=2).to_dict()).encode()[:25]
    path.write_bytes(full + torn)  # killed mid-write
    with caplog.at_level(logging.WARNING):
        assert [r.index for r in load_records(path)] == [0, 1]  # reading ignores the torn line
    assert "partial last line" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING), RecordWriter(path) as w:
        assert path.read_bytes() == full  # cut back to the last newline
        assert w.append([rec(index=1), rec(index=2)]) == 1  # index 1 was already there
    assert "partial last line" in caplog.text
    assert [r.index for r in load_records(path)] == [0, 1, 2]
    # a file that is one torn line only is cut to empty
    path.write_bytes(torn)
    with RecordWriter(path) as w:
        assert w.keys == frozenset()
    assert path.read_bytes() == b""


def test_duplicates_are_never_written(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as w:
        assert w.append([rec(index=0), rec(index=0, text="other")]) == 1  # duplicate within one call
        assert w.append([rec(index=0)]) == 0
        with pytest.raises(DeliberateError, match="already written"):
            w.append([rec(index=1), rec(index=0)], on_duplicate="error")
        assert ("p0", "sample", 1) not in w  # the failed call wrote nothing
    with RecordWriter(path) as w:  # a reopened writer knows the keys on disk
        assert ("p0", "sample", 0) in w
        assert w.append([rec(index=0), rec(index=1)]) == 1
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["text"] == "x\ny"


def test_one_writer_at_a_time(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path), pytest.raises(DeliberateError, match="another process"):
        RecordWriter(path)
    with RecordWriter(path) as w:  # released on close
        w.append([rec()])


@pytest.mark.parametrize("bad, why", [
    ("{not json", "malformed"),
    ('["a list"]', "JSON object"),
    ('{"problem_id": "p9", "strategy": "sample"}', "missing field"),
    (json.dumps({**rec(index=7).to_dict(), "index": "seven"}), "bad record key"),
    (json.dumps(rec(index=0).to_dict()), "duplicate record key"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, why):
    path = tmp_path / "r.jsonl"
    good = [json.dumps(rec(index=j).to_dict()) for j in range(2)]
    path.write_text(good[0] + "\n\n" + good[1] + "\n" + bad + "\n")
    with pytest.raises(DeliberateError, match=why) as e:
        load_records(path)
    assert f"{path}:4" in str(e.value)
    with pytest.raises(DeliberateError, match=f"{path}:4"):
        RecordWriter(path)


def test_write_json_atomic_clears_temps_of_killed_writers(tmp_path):
    """A writer SIGKILLed between its temp file and the rename leaves ``.NAME.PID.*.tmp`` behind;
    the next write of that file removes it, but never the temp of a writer that is still alive."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    path = tmp_path / "meta.json"
    stale = tmp_path / f".meta.json.{dead_pid}.abc123.tmp"
    live = tmp_path / f".meta.json.{os.getppid()}.def456.tmp"
    other = tmp_path / f".other.json.{dead_pid}.abc123.tmp"
    for p in (stale, live, other):
        p.write_text("{")
    write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert not stale.exists() and live.exists() and other.exists()


def test_write_json_atomic(tmp_path):
    path = tmp_path / "d" / "summary.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": [2, "\u00e9"]})
    assert json.loads(path.read_text()) == {"a": [2, "\u00e9"]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]  # no temp files left
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": [2, "\u00e9"]}  # failed write left the old file
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]
