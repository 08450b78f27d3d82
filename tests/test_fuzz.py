"""Random and mutated input: the import format, the vocabulary loaders and the record
constructors give a correct result or the project's own error (EmbedvizError), never another
exception; a rejected import leaves the store as it was."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embedviz
from embedviz.errors import EmbedvizError
from embedviz.records import Metric, Summary, Update
from embedviz.vocab import load_vocabulary

FUZZ = settings(max_examples=int(os.environ.get("EMBEDVIZ_FUZZ", "150")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: JSON values a damaged or hand-edited file may hold where a field is expected
WILD = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@pytest.fixture(scope="module")
def export_lines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    with embedviz.open_store(folder / "src.db") as store:
        store.create_session("s", name="fuzz")
        rng = np.random.default_rng(0)
        store.write([Update("s", "0", i, score=float(rng.normal()), epoch=0, scalars={"lr/0": 0.1},
                            summaries={"param/fc.weight": Summary(count=4, mean=0.1, stdev=1.0,
                                                                  mean_magnitude=0.5, min=-1.0, max=1.0)})
                     for i in range(4)])
        store.log_metric("s", "val_loss", 0.5, 3)
        store.export_jsonl(folder / "all.jsonl")
    return (folder / "all.jsonl").read_text().splitlines()


def _count(store) -> int:
    return sum(1 for _ in store.records())


@FUZZ
@given(data=st.data())
def test_a_mutated_import_file_imports_or_is_refused_whole(export_lines, tmp_path, data):
    lines = list(export_lines)
    i = data.draw(st.integers(0, len(lines) - 1))
    how = data.draw(st.sampled_from(["field", "bytes", "truncate", "nest"]))
    if how == "field":
        record = json.loads(lines[i])
        key = data.draw(st.sampled_from(sorted(record)))
        record[key] = data.draw(WILD)
        lines[i] = json.dumps(record)
    body = ("\n".join(lines) + "\n").encode()
    if how == "bytes":
        at = data.draw(st.integers(0, len(body) - 1))
        body = body[:at] + data.draw(st.binary(min_size=1, max_size=6)) + body[at + 1:]
    elif how == "truncate":
        body = body[:data.draw(st.integers(0, len(body) - 1))]
    elif how == "nest":
        body += b"[" * data.draw(st.integers(1, 50_000)) + b"\n"
    f = tmp_path / "in.jsonl"
    f.write_bytes(body)
    for store in (embedviz.open_store(":memory:"), embedviz.open_store(tmp_path / "t.db")):
        store.create_session("before")
        before = _count(store)
        try:
            store.import_jsonl(f)
        except EmbedvizError:
            assert _count(store) == before
        for s in store.sessions():  # whatever landed reads back
            for w in s.workers:
                for key in store.series_keys(s.id, w.worker):
                    store.read_series(s.id, key, worker=w.worker, max_points=10)
        store.close()
    (tmp_path / "t.db").unlink()
    for extra in ("-wal", "-shm"):
        (tmp_path / f"t.db{extra}").unlink(missing_ok=True)


@FUZZ
@given(iteration=WILD, score=WILD, epoch=WILD, count=WILD, value=WILD, name=WILD)
def test_record_constructors_take_a_value_or_refuse_it_by_name(tmp_path, iteration, score, epoch,
                                                               count, value, name):
    for make in (lambda: Update("s", "0", iteration, score=score, epoch=epoch),
                 lambda: Summary(count=count, mean=value, stdev=1.0, mean_magnitude=1.0, min=0.0, max=1.0),
                 lambda: Metric("s", name, value, iteration)):
        try:
            record = make()
        except EmbedvizError:
            continue
        if isinstance(record, Summary):
            record = Update("s", "0", 0, summaries={"param/w": record})
        for store in (embedviz.open_store(":memory:"), embedviz.open_store(tmp_path / "r.db")):
            store.create_session("s")  # (a record that was taken can be stored and read back)
            store.write([record])
            assert list(store.records("s"))
            store.close()


@FUZZ
@given(body=st.binary(max_size=300), suffix=st.sampled_from([".vec", ".txt", ".bin", ".tsv"]),
       header=st.sampled_from([b"", b"3 2\n", b"2 3\n", b"1 1\n"]))
def test_a_damaged_vectors_file_loads_or_gets_a_clear_error(tmp_path, body, suffix, header):
    f = tmp_path / f"v{suffix}"
    f.write_bytes(header + body)
    try:
        v = load_vocabulary(f)
    except EmbedvizError:
        return
    assert len(v.labels) == len(v.vectors) and np.isfinite(v.vectors).all()
