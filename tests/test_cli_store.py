"""`embedviz sessions | export | import` as a user runs them."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

import embedviz
from embedviz import demo
from embedviz.cli import main
from embedviz.records import Finding, Session, Update
from tests.conftest import make_update


@pytest.fixture
def filled(tmp_path):
    path = tmp_path / "runs.db"
    store = embedviz.open_store(path)
    store.create_session("run-a", name="baseline")
    rng = np.random.default_rng(0)
    store.write([make_update("run-a", i, rng) for i in range(0, 50, 10)])
    store.log_metric("run-a", "val_loss", math.nan, 40)
    store.close()
    return path


def test_console_script_lists_sessions(filled):
    exe = shutil.which("embedviz")
    assert exe, "the embedviz console script is installed"
    out = subprocess.run([exe, "sessions", str(filled)], capture_output=True, text=True, check=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("run-a")][0]
    assert "baseline" in line and "0..40" in line and " 5 " in line


def test_sessions_prints_whole_names_in_columns_as_wide_as_the_data(tmp_path, capsys):
    path = tmp_path / "runs.db"
    long_name = "resnet50-imagenet-lr0.1-cosine-warmup5"
    with embedviz.open_store(path) as store:
        store.create_session("a", name=long_name)
        store.create_session("b", name="short")
        store.write([Update("a", "rank-0-of-many-workers", 10, score=1.0), Update("b", "0", 5, score=1.0)])
    assert main(["sessions", str(path)]) == 0
    header, first, second = capsys.readouterr().out.splitlines()
    assert long_name in first and "rank-0-of-many-workers" in first
    assert first.index(long_name) == header.index("name") == second.index("short")
    assert first.index("rank-0") == header.index("worker") == second.index("0  ")


def _doctor_store(path, findings=1):
    with embedviz.open_store(path) as store:
        for sid, name in (("id-1", "baseline"), ("id-2", "baseline"), ("id-3", "wide")):
            store.create_session(sid, name=name)
            store.write([Finding(sid, "dead_units", f"dead in {sid} #{k}", iteration=k, worker="rank-1",
                                 layer="fc1", detail={"value": 95.0, "band": "< 90% of outputs 0"})
                         for k in range(findings)])


def test_doctor_names_each_session_and_its_worker(tmp_path, capsys):
    path = tmp_path / "runs.db"
    _doctor_store(path)
    assert main(["doctor", str(path)]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("WARNING")]
    assert [x.split("  [worker")[0].split(None, 2)[2].strip() for x in lines] == [
        "baseline [id-1]", "baseline [id-2]", "wide"]  # (the id only where a name is shared)
    assert all("[worker rank-1]" in x for x in lines)


def test_doctor_names_the_worker_of_a_session_of_several_and_a_healthy_run_exits_0(tmp_path, capsys):
    path = tmp_path / "runs.db"
    falling = [2.3 * 0.97 ** i for i in range(30)]
    with embedviz.open_store(path) as store:
        store.create_session("gan")
        store.write([Update("gan", w, i, score=s) for w in ("D", "G") for i, s in enumerate(falling)])
        store.write([Finding("gan", "dead_units", "dead", iteration=5, worker="D", layer="1",
                             detail={"value": 95.0, "band": "< 90% of outputs 0"})])
        store.create_session("one")
        store.write([Update("one", "0", i, score=s) for i, s in enumerate(falling)])
    assert main(["doctor", str(path), "--session", "gan"]) == 0  # (a warning: exit 0)
    lines = capsys.readouterr().out.splitlines()
    assert "[worker D]" in lines[0] and lines[1].strip().startswith("[worker D] dead")
    assert main(["doctor", str(path), "--session", "one"]) == 0  # (computed: nothing found)
    assert "nothing to worry about" in capsys.readouterr().out
    assert main(["doctor", str(path), "--session", "gan", "--recheck"]) == 0  # (the stored one set aside)
    assert "nothing to worry about" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["doctor", "doctor --json", "sessions"])
def test_output_piped_into_head_ends_quietly(tmp_path, command):
    path = tmp_path / "runs.db"
    _doctor_store(path, findings=1000)  # (more than a pipe holds: the writer sees the reader go)
    if command == "sessions":
        with embedviz.open_store(path) as store:
            store.write([Session(f"extra-{i}", name=f"run {i}") for i in range(2000)])
    got = subprocess.run(["bash", "-c", f'"{sys.executable}" -m embedviz.cli {command} "{path}" | head -1;'
                          ' echo "exit ${PIPESTATUS[0]}"'],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    out = got.stdout.splitlines()
    assert got.stderr == "" and len(out) == 2, got.stderr
    assert out[1] in ("exit 0", "exit 141")


def test_export_then_import_into_a_new_store(filled, tmp_path, capsys):
    out = tmp_path / "all.jsonl"
    assert main(["export", str(filled), "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    types = [json.loads(x)["type"] for x in lines]  # strict JSON: no NaN literals
    assert types == ["session"] + ["update"] * 5 + ["metric"]
    first_update = json.loads(lines[1])
    assert (first_update["session"], first_update["worker"], first_update["iteration"]) == ("run-a", "0", 0)
    assert json.loads(lines[-1])["value"] == {"$float": "NaN"}
    copy = tmp_path / "copy.db"
    assert main(["import", str(out), str(copy)]) == 0
    assert "imported 1 metric, 1 session, 5 update" in capsys.readouterr().out
    assert embedviz.open_store(copy).session("run-a").workers[0].n_updates == 5


def test_a_malformed_line_is_reported_by_number_and_nothing_is_imported(filled, tmp_path, capsys):
    out = tmp_path / "all.jsonl"
    main(["export", str(filled), "-o", str(out)])
    lines = out.read_text().splitlines(keepends=True)
    lines[3] = lines[3][: len(lines[3]) // 2] + "\n"  # a damaged record in the middle
    out.write_text("".join(lines))
    target = tmp_path / "target.db"
    store = embedviz.open_store(target)
    store.create_session("precious")
    store.close()
    assert main(["import", str(out), str(target)]) == 2
    err = capsys.readouterr().err
    assert "line 4 is malformed" in err and "--skip-bad" in err
    store = embedviz.open_store(target)
    assert [s.id for s in store.sessions()] == ["precious"]  # nothing partial, nothing lost
    store.close()
    assert main(["import", str(out), str(target), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "skipped line 4" in captured.err
    assert embedviz.open_store(target).session("run-a").workers[0].n_updates == 4


def test_a_truncated_last_line_is_named_as_such(filled, tmp_path):
    out = tmp_path / "all.jsonl"
    main(["export", str(filled), "-o", str(out)])
    text = out.read_text()
    out.write_text(text[: len(text) - 25])  # the exporter was killed mid-line
    with pytest.raises(embedviz.ImportFormatError, match="line 7 is malformed \\(truncated last line") as e:
        embedviz.open_store(":memory:").import_jsonl(out)
    assert e.value.line == 7


@pytest.mark.parametrize("content, match", [
    (b'{"type": "update", "session": "s"}\n', "bad update record"),
    (b'{"type": "weights"}\n', "unknown record type"),
    (b'[1, 2]\n', "must be a JSON object"),
    (b'\xff\xfe\n', "line 1 is malformed \\(not UTF-8"),
    (b'{"type": "session", "session": "s"}\n{"type": "session", "session": "t"}\n\xff\n', "line 3 is malformed \\(not UTF-8"),
    (b"[" * 100_000 + b"\n", "nested too deeply"),
    (b'{"type": "session", "session": "s"}\n{"type": "update", "session": "s", "worker": "0", '
     b'"iteration": 1000000000000000000000000000000}\n', "line 2 is malformed.*at most 2\\*\\*63"),
    (b'{"type": "session", "session": "s"}\n{"type": "metric", "session": "s", "name": "m", '
     b'"value": 1e999999, "iteration": 9223372036854775808}\n', "line 2 is malformed"),
])
def test_bad_lines_get_clear_errors_and_nothing_is_imported(tmp_path, content, match):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(content)
    for store in (embedviz.open_store(":memory:"), embedviz.open_store(tmp_path / "s.db")):
        store.create_session("before")
        with pytest.raises(embedviz.ImportFormatError, match=match):
            store.import_jsonl(f)
        assert [x.id for x in store.sessions()] == ["before"]
        store.close()


def test_skip_bad_skips_a_line_that_is_not_utf8_and_imports_the_rest(tmp_path):
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(b'{"type": "session", "session": "s"}\n\xff\xfe\n{"type": "session", "session": "t"}\n')
    store = embedviz.open_store(":memory:")
    report = store.import_jsonl(f, skip_bad=True)
    assert [line for line, _ in report.bad_lines] == [2]
    assert {x.id for x in store.sessions()} == {"s", "t"}


def test_cli_errors_name_the_problem(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a store")
    assert main(["sessions", str(notes)]) == 2
    assert "not an embedviz store" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope.db"), "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    store = embedviz.open_store(tmp_path / "s.db")
    store.create_session("only")
    store.close()
    assert main(["export", str(tmp_path / "s.db"), "--session", "typo", "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "unknown session 'typo'" in capsys.readouterr().err


def test_the_demo_records_its_trainings_snapshots_and_maps(tmp_path, capsys):
    store = tmp_path / "demo.db"
    assert main(["demo", "--store", str(store), "--html", str(tmp_path / "vocab.html"), "--no-serve"]) == 0
    out = capsys.readouterr().out
    assert "update:param ratio" in out and "kNN preservation" in out and "embedviz serve" in out
    s = embedviz.open_store(store)
    names = {x.name: x for x in s.sessions()}
    assert set(names) == {"digits-mlp", "digits-mlp-lr-too-high", "lee-word2vec"}
    mlp = names["digits-mlp"].id
    assert len(s.read_series(mlp, "metric/val_accuracy")) == 8
    assert s.read_series(mlp, "metric/val_accuracy").values[-1] > 0.85
    # the planted fault: its score never leaves chance (ln 10)
    bad = s.read_series(names["digits-mlp-lr-too-high"].id, "score").values
    assert abs(bad[-1] - np.log(10)) < 0.3 and s.read_series(mlp, "score").values[-1] < 0.5
    # and the listener's health checks said so while it trained; the healthy run got no warning
    assert "dead_units" in {f.check for _, f in s.findings(names["digits-mlp-lr-too-high"].id)}
    assert [f.check for _, f in s.findings(mlp) if f.severity != "info"] == []
    # the penultimate layer's snapshots, coloured by digit, separate as the network learns
    snaps = s.embeddings(mlp)
    per_epoch = 45  # (1,437 training images in batches of 32: at the listener's iterations)
    assert [e.iteration for e in snaps] == [0, 2 * per_epoch, 8 * per_epoch]
    knn = [max(p.quality["knn_preservation"] for p in s.projections(e.key)) for e in snaps]
    assert all(p.state == "done" for p in s.projections())
    assert set(s.embedding(snaps[-1].key).metadata["digit"]) == {str(d) for d in range(10)}
    assert len(s.projections()) == 6 and knn[-1] > 0.2
    assert (tmp_path / "vocab.html").stat().st_size > 100_000


def test_a_store_damaged_mid_file_gets_one_line_not_a_traceback(tmp_path, capsys):
    path = tmp_path / "damaged.db"
    with embedviz.open_store(path) as store:
        store.create_session("s")
        store.write([Update("s", "0", i, score=1.0, scalars={"lr/0": 0.1}) for i in range(3000)])
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8192] = b"\xa5" * 8192  # pages in the middle
    path.write_bytes(bytes(data))
    code = main(["export", str(path), "-o", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "damaged" in err and "Traceback" not in err
    with pytest.raises(sqlite3.DatabaseError):
        main(["--debug", "export", str(path), "-o", str(tmp_path / "x.jsonl")])


TINY = {"digits-mlp-lr-too-high": 1, "digits-mlp": 2, "lee-word2vec": 2}


def _demo_sessions(path):
    with embedviz.open_store(path, readonly=True) as s:
        return [(x.name, x.tags.get("demo"), x.tags.get("demo_state"), x.id) for x in s.sessions()]


def test_the_demo_run_again_records_nothing_and_again_records_a_new_set(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "EPOCHS", TINY)
    path, html = str(tmp_path / "demo.db"), str(tmp_path / "vocab.html")
    assert main(["demo", "--store", path, "--html", html, "--no-serve"]) == 0
    first = _demo_sessions(path)
    assert sorted(x[:3] for x in first) == [(p, 1, "done") for p in sorted(demo.PARTS)]
    capsys.readouterr()
    assert main(["demo", "--store", path, "--html", html, "--no-serve"]) == 0
    out = capsys.readouterr().out
    assert "already holds the demo (set 1)" in out and "--again" in out and "recorded in" not in out
    assert _demo_sessions(path) == first
    assert main(["demo", "--store", path, "--html", html, "--no-serve", "--again"]) == 0
    assert "kNN preservation" in capsys.readouterr().out
    second = [x for x in _demo_sessions(path) if x not in first]
    assert sorted(x[:3] for x in second) == [(p, 2, "done") for p in sorted(demo.PARTS)]
    with embedviz.open_store(path, readonly=True) as s:  # (each set's snapshots are its own)
        for name, _, _, sid in first + second:
            assert (len(s.embeddings(sid)) > 0) == (name != "digits-mlp-lr-too-high"), name


def test_the_demo_names_its_parts_when_given_another():
    with pytest.raises(embedviz.EmbedvizError, match="no part 'mlp'.*digits-mlp-lr-too-high, digits-mlp"):
        demo.run(embedviz.open_store(":memory:"), html=None, epochs={"mlp": 1})


def test_a_demo_stopped_with_ctrl_c_says_how_to_complete_it(tmp_path, capsys, monkeypatch):
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(demo, "run", stopped)
    assert main(["demo", "--store", str(tmp_path / "d.db"), "--no-serve"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and f"embedviz demo --store {tmp_path / 'd.db'}" in err


def _interrupting(desc):
    """tqdm that stops (as Ctrl+C does) after the first step of the bar called ``desc``."""
    real = demo.tqdm

    def bar(*args, **kwargs):
        inner = real(*args, **kwargs)
        if kwargs.get("desc") != desc:
            return inner

        def steps():
            for i, x in enumerate(inner):
                if i == 1:
                    raise KeyboardInterrupt
                yield x
        return steps()
    return bar


@pytest.mark.parametrize("where", ["digits-mlp", "t-SNE of lee-word2vec"])
def test_an_interrupted_demo_is_completed_without_duplicates(tmp_path, capsys, monkeypatch, where):
    monkeypatch.setattr(demo, "EPOCHS", TINY)
    store = embedviz.open_store(tmp_path / "demo.db")
    monkeypatch.setattr(demo, "tqdm", _interrupting(where))
    with pytest.raises(KeyboardInterrupt):
        demo.run(store, html=None)
    before = {x.name: x for x in store.sessions()}
    monkeypatch.undo()
    monkeypatch.setattr(demo, "EPOCHS", TINY)
    ids = demo.run(store, html=None)
    assert "completing the interrupted demo (set 1)" in capsys.readouterr().out
    after = {x.name: x for x in store.sessions()}
    assert len(after) == len(store.sessions())  # (no name twice)
    assert {n: x.tags["demo_state"] for n, x in after.items()} == {
        **{p: "done" for p in demo.PARTS},
        **({"digits-mlp (interrupted)": "interrupted"} if where == "digits-mlp" else {})}
    assert ids["digits-mlp-lr-too-high"] == before["digits-mlp-lr-too-high"].id  # (kept, not again)
    if where == "digits-mlp":  # (its training stopped: recorded anew, the stopped one set aside)
        assert ids["digits-mlp"] != before["digits-mlp"].id
        assert after["digits-mlp (interrupted)"].id == before["digits-mlp"].id
    else:  # (trained, not yet projected: its maps were made)
        assert ids["lee-word2vec"] == before["lee-word2vec"].id
    for sid in (ids["digits-mlp"], ids["lee-word2vec"]):
        assert all(p.state == "done" for e in store.embeddings(sid) for p in store.projections(e.key))
        assert len([p for e in store.embeddings(sid)[-3:] for p in store.projections(e.key)]) == min(
            3, len(store.embeddings(sid)))
    store.close()


# ------------------------------------------------------------------ found by a new user
def _damaged(path):
    with embedviz.open_store(path) as store:
        store.create_session("s")
        store.write([Update("s", "0", i, score=1.0, scalars={"lr/0": 0.1}) for i in range(3000)])
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8192] = b"\xa5" * 8192  # pages in the middle
    path.write_bytes(bytes(data))


def test_export_checks_its_arguments_first_and_writes_the_file_whole_or_not_at_all(filled, tmp_path,
                                                                                  capsys):
    out = tmp_path / "keep.jsonl"
    out.write_text("the previous export\n")
    out.chmod(0o640)
    assert main(["export", str(filled), "--session", "nope", "-o", str(out)]) == 2
    assert "unknown session 'nope'" in capsys.readouterr().err
    assert out.read_text() == "the previous export\n"
    damaged = tmp_path / "damaged.db"
    _damaged(damaged)
    assert main(["export", str(damaged), "-o", str(out)]) == 2
    assert "damaged" in capsys.readouterr().err
    assert out.read_text() == "the previous export\n"  # (not a partial export)
    assert main(["export", str(filled), "-o", str(out)]) == 0
    assert "wrote 7 records" in capsys.readouterr().err
    assert out.read_text().startswith('{"type":"session"') and out.stat().st_mode & 0o777 == 0o640
    assert [f for f in os.listdir(tmp_path) if "keep" in f] == ["keep.jsonl"]  # (no temp file)
    umask = os.umask(0o022)
    os.umask(umask)
    assert main(["export", str(filled), "-o", str(tmp_path / "new.jsonl")]) == 0
    capsys.readouterr()
    assert (tmp_path / "new.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask  # (as open() makes it)
    for target, why in ((tmp_path / "no-such-folder" / "x.jsonl", "folder .*no-such-folder does not "
                         "exist; create it first"), (tmp_path, "it is a folder; name a file in it")):
        assert main(["export", str(filled), "-o", str(target)]) == 2
        err = capsys.readouterr().err
        assert re.search(why, err) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "no-such-folder").exists()


def test_tsne_checks_its_output_before_projecting_and_takes_a_short_run(tmp_path, capsys, monkeypatch):
    import embedviz.projection
    rng = np.random.default_rng(0)
    vec = tmp_path / "small.vec"
    vec.write_text("40 5\n" + "".join(f"w{i} " + " ".join(f"{x:.3f}" for x in rng.normal(size=5))
                                      + "\n" for i in range(40)))
    projected = []
    real = embedviz.projection.BarnesHutTsne.fit_transform
    monkeypatch.setattr(embedviz.projection.BarnesHutTsne, "fit_transform",
                        lambda self, *a, **kw: projected.append(self) or real(self, *a, **kw))
    assert main(["tsne", str(vec), "-o", str(tmp_path / "no-such-folder" / "v.html")]) == 2
    err = capsys.readouterr().err
    assert "no-such-folder does not exist" in err and len(err.strip().splitlines()) == 1
    assert projected == []  # (nothing computed before the error)
    out = tmp_path / "v.html"
    assert main(["tsne", str(vec), "-o", str(out), "--max-iter", "10", "--perplexity", "5"]) == 0, \
        capsys.readouterr().err
    assert out.stat().st_size > 1000 and projected[-1].stop_lying_iteration == 3
    assert main(["tsne", str(vec), "-o", str(out), "--max-iter", "20", "--early-iter", "30"]) == 2
    assert "--early-iter 30 is more than --max-iter 20" in capsys.readouterr().err
    from embedviz.cli import build_parser
    tsne_help = build_parser()._subparsers._group_actions[0].choices["tsne"].format_help()
    assert "--early-iter" in " ".join(tsne_help.split()) and "a third of --max-iter" in " ".join(
        tsne_help.split())


def test_import_twice_imports_nothing_and_a_failed_import_leaves_no_new_store(filled, tmp_path, capsys):
    out = tmp_path / "all.jsonl"
    assert main(["export", str(filled), "-o", str(out)]) == 0
    copy = tmp_path / "copy.db"
    assert main(["import", str(out), str(copy)]) == 0
    assert "imported 1 metric, 1 session, 5 update" in capsys.readouterr().out
    assert main(["import", str(out), str(copy)]) == 0
    assert f"imported nothing into {copy}; 7 already present" in capsys.readouterr().out
    # a line of a session neither in the file nor in the store: named in the parse phase
    lines = out.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[1:]))  # (without its session line)
    fresh = tmp_path / "fresh.db"
    assert main(["import", str(cut), str(fresh)]) == 2
    err = capsys.readouterr().err
    assert "line 1 is of an unknown session" in err and "'run-a'" in err and "--skip-bad" in err
    assert not any(p.name.startswith("fresh.db") for p in tmp_path.iterdir())  # (no empty store)
    assert main(["import", str(cut), str(fresh), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "imported nothing" in captured.out and "skipped line 6" in captured.err
    assert main(["import", str(tmp_path / "absent.jsonl"), str(fresh)]) == 2
    assert "absent.jsonl" in capsys.readouterr().err
    assert main(["import", str(cut), str(copy)]) == 0  # (the store holds the session)
    assert "imported nothing" in capsys.readouterr().out


def test_doctor_takes_a_session_name_and_lists_the_known_ones(tmp_path, capsys):
    path = tmp_path / "runs.db"
    _doctor_store(path)
    assert main(["doctor", str(path), "--session", "wide"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("WARNING")]
    assert len(lines) == 1 and " wide " in lines[0]
    assert main(["doctor", str(path), "--session", "id-2"]) == 0  # (an id still works)
    assert "baseline [id-2]" in capsys.readouterr().out
    assert main(["doctor", str(path), "--session", "baseline"]) == 2
    assert "2 sessions are named 'baseline': pass the id of one: id-1, id-2" in capsys.readouterr().err
    assert main(["doctor", str(path), "--session", "typo"]) == 2
    err = capsys.readouterr().err
    assert "no session named 'typo'" in err and "baseline [id-1], baseline [id-2], wide [id-3]" in err


def test_a_missing_store_says_how_a_store_comes_to_be(tmp_path, capsys):
    assert main(["sessions", str(tmp_path / "nope.db")]) == 2
    err = capsys.readouterr().err
    assert "nope.db does not exist: check the path" in err and "`embedviz demo`" in err
    assert "open it writable" not in err
