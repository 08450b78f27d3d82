"""embedviz.layers: which parameters are weights and in what order tensors come, the one
rule the health checks and the app's charts share."""

from __future__ import annotations

import pytest

import embedviz
from embedviz.layers import (
    forward_order,
    is_weight,
    layer_of,
    param_shape,
    sort_tensors,
    tensor_names,
    weight_names,
)

# a layer table as StatsListener records it, the modules listed in definition order
TABLE = [
    {"name": "out", "type": "Linear", "params": {"weight": [3, 8], "bias": [3]}},
    {"name": "norm", "type": "LayerNorm", "params": {"weight": [8], "bias": [8]}},
    {"name": "rnn", "type": "GRU", "params": {"weight_ih_l0": [24, 8], "weight_hh_l0": [24, 8],
                                              "bias_ih_l0": [24], "bias_hh_l0": [24]}},
    {"name": "conv", "type": "Conv1d", "params": {"weight": [8, 8, 3], "bias": [8]}},
    {"name": "embed", "type": "Embedding", "params": {"weight": [20, 8]}},
    {"name": "act", "type": "ReLU", "params": {}},
]
RAN = ["embed", "conv", "act", "rnn", "norm", "out"]
STATIC = {"model": {"layers": TABLE, "graph": {"execution_order": RAN}}}
FORWARD_PARAMS = ["embed.weight", "conv.weight", "conv.bias", "rnn.weight_ih_l0", "rnn.weight_hh_l0",
                  "rnn.bias_ih_l0", "rnn.bias_hh_l0", "norm.weight", "norm.bias", "out.weight",
                  "out.bias"]


@pytest.mark.parametrize("name, weight", [
    ("out.weight", True), ("out.bias", False),
    ("norm.weight", False),  # (a norm's scale is 1-D: its update:param ratio says little)
    ("norm.bias", False),
    ("rnn.weight_ih_l0", True), ("rnn.weight_hh_l0", True), ("rnn.bias_ih_l0", False),
    ("conv.weight", True), ("conv.bias", False),
    ("embed.weight", True),
])
def test_a_weight_is_a_parameter_of_two_or_more_dimensions_in_the_layer_table(name, weight):
    assert is_weight(name, STATIC) is weight


@pytest.mark.parametrize("name, weight", [
    ("fc.weight", True), ("fc.bias", False), ("rnn.weight_hh_l0", True), ("rnn.bias_hh_l0", False),
    ("weight", True), ("scale", False),
])
@pytest.mark.parametrize("static", [None, {}, {"model": {}}, {"model": {"layers": "garbage"}},
                                    {"model": {"layers": [{"name": "fc", "params": None}]}},
                                    {"model": {"layers": [{"name": "rnn", "params": {"weight_hh_l0": "?"}}]}}],
                         ids=["none", "empty", "no-layers", "not-a-list", "no-params", "not-a-shape"])
def test_without_a_shape_a_weight_is_known_by_its_name(name, weight, static):
    assert is_weight(name, static) is weight


def test_a_shape_in_the_table_decides_over_the_name():
    static = {"model": {"layers": [{"name": "m", "params": {"weight": [4], "kernel": [4, 4]}}]}}
    assert not is_weight("m.weight", static) and is_weight("m.kernel", static)
    assert param_shape("m.kernel", static) == [4, 4] and param_shape("m.other", static) is None


def test_weight_names_keeps_the_order_it_is_given():
    assert weight_names(FORWARD_PARAMS, STATIC) == ["embed.weight", "conv.weight", "rnn.weight_ih_l0",
                                                    "rnn.weight_hh_l0", "out.weight"]
    assert weight_names(["b.weight", "a.bias", "a.weight"]) == ["b.weight", "a.weight"]


def test_the_forward_order_is_the_execution_order_then_modules_that_did_not_run():
    assert forward_order(STATIC) == RAN
    partial = {"model": {"layers": TABLE, "graph": {"execution_order": ["embed", "conv"]}}}
    assert forward_order(partial) == ["embed", "conv", "out", "norm", "rnn", "act"]
    assert forward_order({"model": {"layers": TABLE}}) == [x["name"] for x in TABLE]
    assert forward_order(None) == [] and forward_order({"model": "?"}) == []


def test_parameters_sort_by_module_in_forward_order_then_by_the_tables_order():
    shuffled = sorted(FORWARD_PARAMS) + ["stray.weight", "alpha"]
    got = sort_tensors(shuffled, "param", forward_order(STATIC), STATIC)
    assert got == FORWARD_PARAMS + ["alpha", "stray.weight"]  # (unknown modules last, by name)
    # without the table: modules in forward order, each one's parameters by name
    assert sort_tensors(["rnn.weight_ih_l0", "rnn.bias_hh_l0", "conv.weight"], "param", RAN) == [
        "conv.weight", "rnn.bias_hh_l0", "rnn.weight_ih_l0"]


def test_tensor_names_reads_series_keys_of_one_kind():
    keys = [f"{kind}/{n}/{stat}" for kind in ("param", "gradient") for n in reversed(FORWARD_PARAMS)
            for stat in ("mean", "mean_magnitude")]
    keys += [f"activation/{m}/mean_magnitude" for m in ("out", "act", "embed")] + ["score", "lr/0"]
    assert tensor_names(keys, "param", STATIC) == FORWARD_PARAMS
    assert tensor_names(keys, "gradient", STATIC) == FORWARD_PARAMS
    assert tensor_names(keys, "activation", STATIC) == ["embed", "act", "out"]
    assert tensor_names(keys, "update", STATIC) == []


def test_layer_of():
    assert layer_of("fc1.weight") == "fc1"
    assert layer_of("blocks.0.attn.weight") == "blocks.0.attn"
    assert layer_of("weight") == ""


def test_the_rule_reads_the_layer_table_a_listener_records():
    import torch
    from embedviz.monitor import StatsListener
    from torch import nn

    class Net(nn.Module):  # (modules defined in another order than they run)
        def __init__(self) -> None:
            super().__init__()
            self.out = nn.Linear(8, 3)
            self.norm = nn.LayerNorm(8)
            self.rnn = nn.GRU(8, 8, batch_first=True)
            self.conv = nn.Conv1d(8, 8, 3, padding=1)
            self.embed = nn.Embedding(20, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(self.embed(x).transpose(1, 2)).transpose(1, 2)
            return self.out(self.norm(self.rnn(h)[0][:, -1]))

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    store = embedviz.open_store(":memory:")
    listener = StatsListener(store, 1, background="thread", budget=None)
    with listener.attach(model, opt):
        for _ in range(2):
            loss = model(torch.randint(20, (4, 5))).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            listener.step(loss)
    static, keys = store.static(listener.session), store.series_keys(listener.session)
    assert forward_order(static)[:5] == ["embed", "conv", "rnn", "norm", "out"]
    params = tensor_names(keys, "param", static)
    assert params == ["embed.weight", "conv.weight", "conv.bias", "rnn.weight_ih_l0", "rnn.weight_hh_l0",
                      "rnn.bias_ih_l0", "rnn.bias_hh_l0", "norm.weight", "norm.bias", "out.weight",
                      "out.bias"]
    assert weight_names(params, static) == ["embed.weight", "conv.weight", "rnn.weight_ih_l0",
                                            "rnn.weight_hh_l0", "out.weight"]
