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
    Checker,
    check_records,
    check_session,
    describe,
)
from embedviz.records import Finding, Metric, Static, Summary, Update
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


@pytest.mark.parametrize("run", zoo.HEALTHY, ids=lambda r: r.name)
def test_healthy_trainings_get_no_warning_or_error(recorded, run):
    store, ids, _ = recorded
    loud = [(f.check, f.layer, f.iteration) for _, f in store.findings(ids[run.name])
            if f.severity != "info"]
    assert loud == []


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
    assert set(c.params) == set(c.find.__code__.co_varnames[1:c.find.__code__.co_argcount]) - {
        "num_classes"}
    for variant, en in c.text["en"].items():
        fields = _fields(en)
        assert "value" in fields and set(_fields(c.text["ja"][variant])) == set(fields)
        args = {k: 1.5 for k in fields}
        f = Finding("s", name, "stored", 0, detail={"value": 1.5, "args": args,
                                                    **({"variant": variant} if variant else {})})
        ja = describe(f, "ja")
        assert ja != "stored" and "1.5" in ja and not ENGLISH.search(ja), ja


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
    listener = StatsListener(path, 2, background="process", num_classes=2, max_pending=64)
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
