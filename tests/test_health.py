"""Health checks: the zoo of broken trainings is found, the healthy ones stay quiet, the
listener's findings are what a replay of the stored session gives, and `embedviz doctor`
prints them."""

from __future__ import annotations

import json
import math
import os
import re
import string
import subprocess
import sys

import numpy as np
import pytest

import embedviz
from embedviz.errors import InvalidRecordError
from embedviz.health import (
    CHECKS,
    SEVERITY_TEXT,
    WINDOW,
    Checker,
    check_records,
    check_session,
    describe,
)
from embedviz.records import Finding, Metric, Session, Static, Summary, Update
from embedviz.store import codec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
import zoo  # noqa: E402


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Every run of the zoo, recorded by StatsListener with its checks on."""
    path = tmp_path_factory.mktemp("zoo") / "zoo.db"
    with embedviz.open_store(path) as store:
        ids = {run.name: zoo.train(store, run) for run in zoo.BROKEN + zoo.HEALTHY}
    store = embedviz.open_store(path, readonly=True)
    yield store, ids, path
    store.close()


def _planted_iteration(store, session, run):
    check, _, iteration = run.planted
    if check == "overfitting":  # (where its validation loss was lowest)
        val = store.read_series(session, "metric/val_loss")
        return int(val.iterations[np.nanargmin(val.values)])
    return iteration


@pytest.mark.parametrize("run", zoo.BROKEN, ids=lambda r: r.name)
def test_each_planted_fault_is_found_by_its_check_at_its_layer(recorded, run):
    store, ids, _ = recorded
    check, layer, _ = run.planted
    found = [f for _, f in store.findings(ids[run.name]) if f.check == check]
    assert found, f"{run.name}: no {check} finding among " + str(
        [(f.check, f.layer, f.iteration) for _, f in store.findings(ids[run.name])])
    first = found[0]
    assert first.layer == layer and first.severity == CHECKS[check].severity
    planted = _planted_iteration(store, ids[run.name], run)
    assert abs(first.iteration - planted) <= 2 * zoo.FREQUENCY, (first.iteration, planted)
    assert first.message and first.detail["band"]


def _judged(store, session):
    """A session's findings as `embedviz doctor` gives them: stored, or replayed when it was
    recorded without the checks (the GAN's two workers)."""
    return [f for _, f in store.findings(session)] or check_session(store, session)


@pytest.mark.parametrize("run", zoo.HEALTHY, ids=lambda r: r.name)
def test_healthy_trainings_get_no_warning_or_error(recorded, run):
    store, ids, _ = recorded
    loud = [(f.worker, f.check, f.layer, f.iteration) for f in _judged(store, ids[run.name])
            if f.severity != "info"]
    assert loud == []


def test_no_run_of_the_zoo_gets_advice_that_contradicts_itself(recorded):
    store, ids, _ = recorded
    for name, sid in ids.items():
        found = _judged(store, sid)
        assert _lr_advice(found) != {-1, 1}, (name, [(f.check, f.layer) for f in found])


def test_the_gan_is_recognised_as_a_game_without_being_told(recorded):
    store, ids, _ = recorded
    sid = ids["healthy-gan"]
    assert {w.worker for w in store.session(sid).workers} == {"D", "G"}
    assert "loss_flat" not in {f.check for f in check_session(store, sid)}
    alone = [r for r in store.records(sid) if isinstance(r, Update) and r.worker == "G"]
    assert "loss_flat" in {f.check for f in check_records(alone)}  # (one side seen alone)


def test_replaying_a_stored_session_gives_the_listeners_findings(recorded):
    store, ids, _ = recorded
    for name in ("nan-planted", "relu-dead", "overfitting", "healthy-adam"):
        live = [(f.check, f.layer, f.iteration, f.severity) for _, f in store.findings(ids[name])]
        again = [(f.check, f.layer, f.iteration, f.severity) for f in check_session(store, ids[name])]
        assert again == live, name


#: three English words in a row: a sentence left untranslated
ENGLISH = re.compile(r"[A-Za-z]{2,}(?: [A-Za-z]{2,}){2,}")


def _fields(template):
    return {f: spec for _, f, spec, _ in string.Formatter().parse(template) if f}


def _zoo_findings(recorded):
    store, ids, _ = recorded
    return [f for sid in ids.values() for _, f in store.findings(sid)]


def test_every_zoo_finding_shows_its_value_in_english_and_in_japanese(recorded):
    found = _zoo_findings(recorded)
    assert {f.check for f in found} >= {"nan", "loss_diverging", "loss_flat", "update_ratio_low",
                                        "update_ratio_high", "saturation", "dead_units", "overfitting"}
    for f in found:
        template = CHECKS[f.check].text["en"][f.detail.get("variant", "")]
        value = f.detail["value"]
        shown = format(float(value), _fields(template)["value"])
        assert codec.dumps(f.detail["args"]["value"]) == codec.dumps(value)  # (NaN != NaN)
        assert shown in f.message, (f.check, shown, f.message)
        assert describe(f) == describe(f, "en") == f.message
        ja = describe(f, "ja")
        assert shown in ja and not ENGLISH.search(ja), (f.check, ja)
        assert codec.dumps(codec.loads(codec.dumps(f.detail))) == codec.dumps(f.detail)


def test_a_ratio_finding_shows_the_median_it_stores_not_the_last_report():
    layers = {"model": {"layers": [{"name": "fc", "type": "Linear", "params": {"weight": [4, 4]}}]}}
    ratios = [-0.5] * 6 + [-0.9]  # (the last report below the median of the last five)
    records = [Static("s", "0", layers)] + [
        _update(i, 1.0, **{"param/fc.weight": {"mm": 1.0}, "update/fc.weight": {"mm": 10 ** r}})
        for i, r in enumerate(ratios)]
    found = [f for f in Checker(options={"update_ratio_high": {"warmup": 0}}).feed(records)
             if f.check == "update_ratio_high"]
    assert found and found[0].detail["value"] == pytest.approx(-0.5)
    assert "-0.50" in found[0].message and "-0.90" not in found[0].message


@pytest.mark.parametrize("name", list(CHECKS))
def test_every_check_has_its_messages_in_both_languages_with_the_same_arguments(name):
    c = CHECKS[name]
    assert set(c.text) == {"en", "ja"} and set(c.text["en"]) == set(c.text["ja"])
    # (its parameters are its function's: what else it needs is the history's context)
    assert set(c.params) == set(c.find.__code__.co_varnames[1:c.find.__code__.co_argcount])
    for variant, en in c.text["en"].items():
        fields = _fields(en)
        assert "value" in fields and set(_fields(c.text["ja"][variant])) == set(fields)
        args = {k: 1.5 for k in fields}
        f = Finding("s", name, "stored", 0, detail={"value": 1.5, "args": args,
                                                    **({"variant": variant} if variant else {})})
        ja = describe(f, "ja")
        assert ja != "stored" and "1.5" in ja and not ENGLISH.search(ja), ja
    if c.short:  # (its phrase, naming it as a cause or a consequence, in both languages)
        assert set(c.short) == {"en", "ja"} and _fields(c.short["en"]) == _fields(c.short["ja"])
        assert set(_fields(c.short["en"])) <= set().union(*map(_fields, c.text["en"].values()))


def test_describe_falls_back_to_the_stored_message():
    mine = Finding("s", "my_check", "written by hand", 3)
    assert describe(mine, "ja") == "written by hand"
    old = Finding("s", "dead_units", "stored long ago", 3, detail={"value": 0.95})
    assert describe(old, "ja") == "stored long ago"
    other = Finding("s", "dead_units", "from another version", 3, detail={"args": {"ratio": 1}})
    assert describe(other, "ja") == "from another version"
    with pytest.raises(ValueError, match="no language 'fr'.*en, ja"):
        describe(mine, "fr")
    assert SEVERITY_TEXT["ja"] == {"error": "エラー", "warning": "警告", "info": "情報"}
    assert set(SEVERITY_TEXT["en"]) == set(SEVERITY_TEXT["ja"])


def test_the_checks_take_weights_by_the_shared_rule():
    """A recurrent layer's weights (``weight_hh_l0``) are checked without a layer table; a
    norm's 1-D scale is not, though it is called weight."""
    tiny = {"param/rnn.weight_hh_l0": {"mm": 1.0}, "update/rnn.weight_hh_l0": {"mm": 1e-6},
            "param/norm.weight": {"mm": 1.0}, "update/norm.weight": {"mm": 1e-6}}
    layers = {"model": {"layers": [{"name": "norm", "type": "LayerNorm", "params": {"weight": [8]}}]}}
    records = [Static("s", "0", layers)] + [_update(i, 1.0 - i / 100, **tiny) for i in range(8)]
    found = [(f.check, f.layer) for f in check_records(records) if f.check == "update_ratio_low"]
    assert found == [("update_ratio_low", "rnn.weight_hh_l0")]


def test_an_embedding_table_is_not_told_its_updates_are_tiny():
    """An embedding's rows learn only when their tokens are in the batch: its mean
    update:param ratio is low by design (word_language_model's encoder at lr=20)."""
    tiny = {"param/encoder.weight": {"mm": 1.0}, "update/encoder.weight": {"mm": 1e-6},
            "param/decoder.weight": {"mm": 1.0}, "update/decoder.weight": {"mm": 1e-6}}
    layers = {"model": {"layers": [
        {"name": "encoder", "type": "Embedding", "params": {"weight": [1000, 64]}},
        {"name": "decoder", "type": "Linear", "params": {"weight": [1000, 64]}}]}}
    records = [Static("s", "0", layers)] + [_update(i, 1.0 - i / 100, **tiny) for i in range(8)]
    found = [(f.check, f.layer) for f in check_records(records) if f.check == "update_ratio_low"]
    assert found == [("update_ratio_low", "decoder.weight")]


def _update(i, score, **summaries):
    return Update("s", "0", i, score=score, summaries={
        k: Summary(count=10, mean=0.0, stdev=v.get("stdev", 1.0), mean_magnitude=v.get("mm", 1.0),
                   min=-1.0, max=1.0, nan_count=v.get("nan", 0), inf_count=0,
                   zero_fraction=v.get("zero", 0.0)) for k, v in summaries.items()})


def test_a_nan_names_the_first_layer_in_forward_order_once():
    model = {"model": {"layers": [{"name": n, "type": "Linear", "params": {}} for n in ("a", "b")],
                       "graph": {"execution_order": ["a", "b"]}}}
    records = [Static("s", "0", model)]
    records += [_update(i, 1.0, **{"activation/a": {}, "activation/b": {}}) for i in range(5)]
    records += [_update(i, math.nan, **{"activation/b": {"nan": 3}, "activation/a": {"nan": 1}})
                for i in range(5, 12)]
    found = check_records(records)
    assert [(f.check, f.layer, f.iteration, f.severity) for f in found] == [("nan", "a", 5, "error")]


def test_a_finding_ends_when_its_condition_clears_and_a_new_episode_is_found_again():
    dead = {"activation/1": {"zero": 0.99}}
    alive = {"activation/1": {"zero": 0.3}}
    layers = {"model": {"layers": [{"name": "1", "type": "ReLU", "params": {}}]}}
    pattern = [dead] * 6 + [alive] * 4 + [dead] * 6
    found = check_records([Static("s", "0", layers)] + [_update(i, 1.0 - i / 100, **p) for i, p in
                                                        enumerate(pattern)])
    assert [(f.check, f.iteration) for f in found] == [("dead_units", 0), ("dead_units", 10)]


def test_a_diverging_score_is_an_error_and_a_noisy_well_trained_one_is_not():
    rng = np.random.default_rng(0)
    falling = [2.3 * math.exp(-i / 10) + abs(rng.normal(0, 0.01)) for i in range(40)]
    spiky = falling[:35] + [falling[34] * 15] + falling[36:]  # a bad batch, below the start
    assert [f.check for f in check_records([_update(i, s) for i, s in enumerate(spiky)])
            if f.severity == "error"] == []
    blown = falling[:20] + [falling[19] * 3 ** k for k in range(1, 8)]
    found = [f for f in check_records([_update(i, s) for i, s in enumerate(blown)])
             if f.check == "loss_diverging"]
    assert found and found[0].iteration <= 21


def test_the_first_score_is_compared_with_chance_when_the_classes_are_known():
    assert check_records([_update(0, 2.31)], num_classes=10) == []
    found = check_records([_update(0, 9.5)], num_classes=10)
    assert [f.check for f in found] == ["initial_loss"] and "ln(10) = 2.30" in found[0].message
    assert check_records([_update(0, 9.5)]) == []  # (no chance level without the classes)


def test_overfitting_is_a_validation_loss_rising_while_the_score_falls():
    val = [1.0, 0.8, 0.7, 0.75, 0.8, 0.9]
    records = []
    for i in range(30):
        records.append(_update(i * 10, 2.0 - i * 0.03))
        if i % 5 == 0 and i // 5 < len(val):
            records.append(Metric("s", "val_loss", val[i // 5], i * 10))
    found = [f for f in check_records(records) if f.check == "overfitting"]
    assert found and found[0].iteration == 100  # (where val_loss was lowest)


def test_check_options_are_checked_and_a_check_can_be_turned_off():
    with pytest.raises(InvalidRecordError, match="no health check named 'dead'"):
        Checker(options={"dead": {}})
    with pytest.raises(InvalidRecordError, match="has no parameter 'limit'.*threshold"):
        Checker(options={"dead_units": {"limit": 0.5}})
    records = [_update(0, 9.5)]
    assert check_records(records, 10, {"initial_loss": False}) == []
    assert check_records(records, 10, {"initial_loss": {"tolerance": 5.0}}) == []


def test_the_worker_process_runs_the_checks_too(tmp_path):
    import torch
    from embedviz.monitor import StatsListener

    path = tmp_path / "p.db"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), zoo.Poison(at=12),
                                torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    listener = StatsListener(path, 2, background="process", num_classes=2, max_pending=64, budget=None)
    with listener.attach(model, opt):
        for _ in range(30):
            loss = torch.nn.functional.cross_entropy(model(torch.randn(16, 8)), torch.randint(2, (16,)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            listener.step(loss)
    assert type(listener._sink).__name__ in ("ProcessSink", "NoneType")
    with embedviz.open_store(path, readonly=True) as store:
        found = [(f.check, f.layer, f.iteration) for _, f in store.findings(listener.session)]
    assert ("nan", "2", 12) in found


def _doctor(*args):
    return subprocess.run([sys.executable, "-m", "embedviz.cli", "doctor", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_doctor_prints_findings_worst_first_and_exits_1_on_an_error(recorded):
    store, ids, path = recorded
    got = _doctor(path, "--session", ids["nan-planted"])
    assert got.returncode == 1, got.stderr
    assert got.stdout.splitlines()[0].startswith("ERROR   nan")
    listed = json.loads(_doctor(path, "--session", ids["nan-planted"], "--json").stdout)
    assert listed[0]["check"] == "nan" and listed[0]["layer"] == "2" and listed[0]["type"] == "finding"
    healthy = _doctor(path, "--session", ids["healthy-adam"])
    assert healthy.returncode == 0 and "ERROR" not in healthy.stdout and "WARNING" not in healthy.stdout
    bad = _doctor(path, "--session", "no-such-session")
    assert bad.returncode == 2 and "no-such-session" in bad.stderr


def test_doctor_computes_findings_for_a_session_recorded_without_checks(tmp_path):
    path = tmp_path / "plain.db"
    with embedviz.open_store(path) as store:
        store.create_session("s")
        store.write([_update(i, s) for i, s in
                     enumerate([2.3, 2.2, 2.1] + [2.1 * 3 ** k for k in range(1, 8)])])
        assert store.findings("s") == []
    got = _doctor(path, "--json")
    assert got.returncode == 1 and json.loads(got.stdout)[0]["check"] == "loss_diverging"


def _digits_batch(n=128):
    import torch
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    g = np.random.default_rng(0).permutation(len(X))[:n]
    return torch.tensor(X[g] / 16.0, dtype=torch.float32), torch.tensor(y[g])


def test_preflight_passes_a_sound_setup_and_leaves_the_model_alone(capsys):
    import torch
    from embedviz.monitor import preflight

    torch.manual_seed(0)
    model = zoo.mlp()
    before = [p.detach().clone() for p in model.parameters()]
    report = preflight(model, torch.nn.functional.cross_entropy, _digits_batch(),
                       lambda p: torch.optim.Adam(p, lr=1e-2))
    assert report.ok, str(report)
    assert "overfit a batch" in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_preflight_finds_a_wrong_gradient_unscaled_inputs_and_sorted_labels():
    import torch
    from embedviz.monitor import preflight

    class WrongGrad(torch.autograd.Function):  # (a hand-written backward with a bug)
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * (x > 0) * 2.0

    class Bad(torch.nn.Module):
        def forward(self, x):
            return WrongGrad.apply(x)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), Bad(), torch.nn.Linear(32, 10))
    x, y = _digits_batch(256)
    order = torch.argsort(y)[:64]  # one or two digits only: the data was not shuffled
    report = preflight(model, torch.nn.functional.cross_entropy, (x[order] * 160, y[order]),
                       lambda p: torch.optim.SGD(p, lr=0.0), show=False)
    assert not report["gradient check"].ok
    assert not report["input scale"].ok and "standardize" in report["input scale"].detail
    assert not report["labels"].ok and "shuffled" in report["labels"].detail
    assert not report["overfit a batch"].ok  # (a learning rate of 0 learns nothing)
    assert not report["initial loss"].ok  # (inputs x160: logits far from chance)


def test_a_non_finite_value_is_stored_as_the_number_it_is_and_still_rendered(tmp_path, capsys):
    from embedviz.cli import main

    model = {"model": {"layers": [{"name": "a", "type": "Linear", "params": {}}],
                       "graph": {"execution_order": ["a"]}}}
    records = [Static("s", "0", model)] + [_update(i, 1.0, **{"activation/a": {}}) for i in range(5)]
    records += [_update(i, math.nan, **{"activation/a": {"nan": 1}}) for i in range(5, 12)]
    (found,) = check_records(records)
    assert found.check == "nan" and isinstance(found.detail["value"], float)
    assert math.isnan(found.detail["value"]) and math.isnan(found.detail["args"]["value"])
    assert "(score nan)" in found.message and "(スコア nan)" in describe(found, "ja")
    path = tmp_path / "runs.db"
    with embedviz.open_store(path) as store:
        store.create_session("s")
        store.add_finding(found)
        (_, stored), = store.findings("s")
        assert math.isnan(stored.detail["value"]) and describe(stored) == found.message
        # a finding recorded by an earlier version, its value as text, is rendered the same
        old = Finding("s", "nan", "old", 5, detail={"value": "-inf", "args": {"value": "-inf",
                                                                             "where": "a"}})
        assert "(score -inf)" in describe(old)
    assert main(["doctor", str(path), "--json"]) == 1
    listed = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(c))
    assert listed[0]["detail"]["value"] == {"$float": "NaN"}  # (the export format: strict JSON)
    assert math.isnan(codec.loads(json.dumps(listed[0]))["detail"]["value"])


# ------------------------------------------------------------ judged against their noise
def _near_zero(n=120, seed=0, level=0.0066, spread=0.8):
    """A healthy run's score: from 2.3 down to ``level``, then minibatch noise around it
    (log-normal: near zero a batch can be 5x its neighbours)."""
    rng = np.random.default_rng(seed)
    return [max(2.3 * math.exp(-i / 6), level) * math.exp(rng.normal(0, spread if i > 30 else 0.1))
            for i in range(n)]


def test_a_loss_near_zero_that_wobbles_is_not_diverging():
    for seed in range(20):
        s = _near_zero(seed=seed)
        s[80] = 0.0406  # (the report of the issue: 6x a best of 0.0066)
        s[81:85] = [0.01, 0.02, 0.03, 0.04]  # (four rises in a row)
        found = [(f.check, f.iteration, f.message) for f in check_records(
            [_update(i, v) for i, v in enumerate(s)]) if f.severity != "info"]
        assert found == [], (seed, found)


def test_a_blow_up_is_caught_on_the_report_it_happens():
    s = _near_zero(60) + [1e6] + [1e6] * 3
    found = [f for f in check_records([_update(i, v) for i, v in enumerate(s)])
             if f.check == "loss_diverging"]
    assert found and found[0].iteration == 60 and found[0].detail["found_at"] == 60
    assert found[0].severity == "error" and "1e+06" in found[0].message
    assert "1e+06" in describe(found[0], "ja")


def test_a_steady_climb_from_a_learning_rate_too_high_is_caught():
    rng = np.random.default_rng(1)
    # down to 0.4, then up by 8% a report (below where it started for 15 reports)
    s = [2.3 * math.exp(-i / 8) + 0.4 for i in range(30)]
    s += [s[-1] * 1.08 ** k for k in range(1, 40)]
    s = [v * math.exp(rng.normal(0, 0.02)) for v in s]
    found = [f for f in check_records([_update(i, v) for i, v in enumerate(s)])
             if f.check == "loss_diverging"]
    assert found, "a steady climb is not found"
    assert 28 <= found[0].iteration <= 34 and found[0].detail["found_at"] < 30 + 20
    assert found[0].detail["args"]["value"] < 2.3  # (found before it passed the start)
    # a climb above where it started, early, with too few reports for a noise
    early = [2.3, 2.5, 3.6, 4.5, 5.5, 7.0, 8.8]
    assert [f.check for f in check_records([_update(i, v) for i, v in enumerate(early)])
            if f.severity == "error"] == ["loss_diverging"]


def test_a_smooth_small_rise_after_a_long_fall_is_not_diverging():
    # (a schedule's restart: the score gives back a little of a large progress)
    s = [2.3 * math.exp(-i / 10) + 0.05 for i in range(60)] + [0.06 + 0.002 * k for k in range(20)]
    assert [f.check for f in check_records([_update(i, v) for i, v in enumerate(s)])
            if f.severity == "error"] == []


# ------------------------------------------------------------ causes and consequences
_MLP = {"model": {"layers": [{"name": "0", "type": "Linear", "params": {"weight": [8, 8]}},
                             {"name": "1", "type": "ReLU", "params": {}},
                             {"name": "2", "type": "Linear", "params": {"weight": [8, 8]}},
                             {"name": "3", "type": "ReLU", "params": {}},
                             {"name": "4", "type": "Linear", "params": {"weight": [2, 8]}}],
                  "graph": {"execution_order": ["0", "1", "2", "3", "4"]}}}


def _dead_then_tiny(tiny_from):
    """ReLU 1 dead from the start; the updates of 0.weight and 2.weight (its neighbours) and
    of 4.weight (not next to it) tiny from report ``tiny_from``."""
    out = [Static("s", "0", _MLP)]
    for i in range(20):
        tiny = i >= tiny_from
        out.append(_update(i, 2.3 - i / 100, **{
            "activation/1": {"zero": 0.99}, "activation/3": {"zero": 0.3},
            **{f"param/{p}.weight": {"mm": 1.0} for p in "024"},
            **{f"update/{p}.weight": {"mm": 1e-6 if tiny else 1e-3} for p in "024"}}))
    return out


def _lr_advice(found):
    return {CHECKS[f.check].lr for f in found if "caused_by" not in f.detail} - {0}


def test_dead_units_explain_the_tiny_updates_around_them_one_finding_one_advice():
    found = check_records(_dead_then_tiny(0))
    assert sorted((f.check, f.layer) for f in found if f.severity != "info") == [
        ("dead_units", "1"), ("update_ratio_low", "4.weight")]  # (4 is not next to 1)
    (dead,) = [f for f in found if f.check == "dead_units"]
    assert [c["layer"] for c in dead.detail["consequences"]] == ["0.weight", "2.weight"]
    assert "Consequences: updates of 0.weight tiny" in dead.message
    assert describe(dead) == dead.message
    ja = describe(dead, "ja")
    assert "その結果: 0.weight の更新量が小さすぎる" in ja and not ENGLISH.search(ja)
    assert dead.message.count("learning rate") == 1  # (one piece of advice)


def test_a_consequence_found_after_its_cause_names_it_and_gives_no_advice():
    found = check_records(_dead_then_tiny(8))
    assert sorted((f.check, f.layer) for f in found if f.severity != "info") == [
        ("dead_units", "1"), ("update_ratio_low", "4.weight")]
    later = [f for f in found if "caused_by" in f.detail]
    assert [(f.check, f.layer, f.severity) for f in later] == [
        ("update_ratio_low", "0.weight", "info"), ("update_ratio_low", "2.weight", "info")]
    assert later[0].detail["caused_by"]["check"] == "dead_units"
    assert "a consequence of dying ReLUs in 1 (ReLU)" in later[0].message
    assert "raise" not in later[0].message and describe(later[0]) == later[0].message
    ja = describe(later[0], "ja")
    assert "の結果です" in ja and not ENGLISH.search(ja)
    # (the tiny updates of 4.weight, not explained, keep their own advice)
    assert _lr_advice([f for f in found if f.layer != "4.weight"]) == {-1}


def test_the_relations_are_declared_on_the_checks():
    for name, c in CHECKS.items():
        for effect, scope in c.explains.items():
            assert effect in CHECKS and effect != name and scope in ("same", "adjacent", "any", "after")
            assert set(c.short) == {"en", "ja"} and set(CHECKS[effect].short) == {"en", "ja"}
    assert CHECKS["dead_units"].explains["update_ratio_low"] == "adjacent"
    with pytest.raises(ValueError, match="no scope 'near'"):
        from embedviz.health import check
        check("info", {}, en="{value}", ja="{value}", explains={"nan": "near"})


# ------------------------------------------------------------ adversarial objectives
def _game(n=60, seed=0):
    """Two losses of a game: each report's change of one is the other's, reversed."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0, 0.05, n).cumsum() * 0.3 + rng.normal(0, 0.05, n)
    return list(0.7 + d), list(0.7 - d)


def test_a_flat_adversarial_loss_is_judged_fairly():
    g, _ = _game()
    records = [_update(i, v) for i, v in enumerate(g)]
    assert "loss_flat" in {f.check for f in check_records(records)}  # (told nothing: one worker)
    assert "loss_flat" not in {f.check for f in check_records(records, objective="adversarial")}
    blown = records + [_update(60, 1e5)]
    assert [f.check for f in check_records(blown, objective="adversarial")
            if f.severity == "error"] == ["loss_diverging"]
    with pytest.raises(InvalidRecordError, match="no objective 'game'"):
        Checker(objective="game")


def _two_workers(g, d, session="s"):
    return [Update(session, w, i, score=v) for i in range(len(g)) for w, v in (("D", d[i]), ("G", g[i]))]


def test_two_workers_whose_losses_move_against_each_other_are_recognised():
    g, d = _game()
    assert "loss_flat" not in {f.check for f in check_records(_two_workers(g, d))}
    # two workers of one model (ranks: their losses move together) are not a game
    rng = np.random.default_rng(3)
    flat = [0.7 + x for x in rng.normal(0, 0.01, 60)]
    found = check_records(_two_workers(flat, [v + rng.normal(0, 0.01) for v in flat]))
    assert {f.worker for f in found if f.check == "loss_flat"} == {"D", "G"}


def test_a_listeners_checker_sees_the_other_workers_through_the_store(tmp_path):
    import pickle

    from embedviz.health import store_peers

    g, d = _game()
    path = tmp_path / "runs.db"
    with embedviz.open_store(path) as store:
        store.create_session("s")
        peers = store_peers(store, every=5)
        checkers = {w: Checker(peers=peers) for w in "DG"}
        found = []
        for i in range(60):
            for w, v in (("D", d[i]), ("G", g[i])):
                u = Update("s", w, i, score=v)
                store.write([u])
                found += checkers[w].feed([u])
        assert "loss_flat" not in {f.check for f in found}
        alone = Checker(peers=lambda s, w: {})
        assert "loss_flat" in {f.check for f in alone.feed([Update("s", "G", i, score=v)
                                                            for i, v in enumerate(g)])}
        again = pickle.loads(pickle.dumps(peers))  # (to a listener's worker process)
        got = again("s", "G")
        assert list(got) == ["D"] and len(got["D"][1]) == WINDOW
        assert np.allclose(got["D"][1], d[-WINDOW:])
    with pytest.raises(InvalidRecordError, match="peers must be a function"):
        Checker(peers={"D": [1.0]})


def test_a_replay_takes_the_objective_from_the_session_and_feeds_workers_together(tmp_path):
    g, d = _game()
    with embedviz.open_store(tmp_path / "runs.db") as store:
        store.write([Session("told", info={"objective": "adversarial"})])
        store.write([Update("told", "0", i, score=v) for i, v in enumerate(g)])
        store.create_session("pair")
        store.write(_two_workers(g, d, "pair"))
        assert "loss_flat" not in {f.check for f in check_session(store, "told")}
        assert "loss_flat" not in {f.check for f in check_session(store, "pair")}


# ------------------------------------------------------------ mixed precision
def _amp(i, score, skipped, bad=False, scale=1024.0):
    u = _update(i * 5, score, **{"gradient/fc.weight": {"nan": 1 if bad else 0}})
    u.scalars = {"amp/skipped_steps": float(skipped), "amp/scale": scale}
    return u


def test_a_step_the_grad_scaler_skipped_is_no_nan_error():
    # (an overflow every 50 iterations: the scaler skips that step; inf gradients reported)
    records = [_amp(i, 2.3 - i / 100, i // 10 + 1, bad=i % 10 == 0) for i in range(40)]
    assert [f.check for f in check_records(records)] == []
    records.append(_amp(40, math.nan, 5, bad=True))  # (a NaN score is one, skipped or not)
    assert [f.check for f in check_records(records)] == ["nan"]
    # an inf gradient at a report whose step was not skipped is an error still
    assert [f.check for f in check_records(records[:5] + [_amp(5, 2.2, 1, bad=True)])] == ["nan"]


def test_a_scaler_skipping_most_steps_is_a_finding():
    records = [_amp(i, 2.3 - i / 100, 0) for i in range(10)]
    records += [_amp(10 + i, 2.2, 4 * i + 4, bad=True, scale=2.0 ** -(i + 1)) for i in range(15)]
    found = [f for f in check_records(records) if f.check == "amp_skipping"]
    assert [(f.severity, f.iteration) for f in found] == [("warning", 50)]  # (the first skip)
    shown = f"{found[0].detail['value']:.3g}%"
    assert found[0].detail["value"] > 50 and f"{shown} of the steps" in found[0].message
    assert shown in describe(found[0], "ja") and "nan" not in {f.check for f in check_records(records)}
