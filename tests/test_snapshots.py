"""A PyTorch model's own embeddings over training: nn.Embedding rows and a layer's outputs."""

from __future__ import annotations

import inspect
import time

import numpy as np
import pytest
import torch
from embedviz.monitor._snapshots import Snapshots
from embedviz.monitor.listener import StatsListener

import embedviz
from embedviz.errors import InvalidRecordError

WORDS = [f"w{i}" for i in range(40)]


class Bag(torch.nn.Module):
    """A word-bag classifier: an embedding, a mean, a linear layer."""

    def __init__(self, vocab: int = 40, dim: int = 8) -> None:
        super().__init__()
        self.encoder = torch.nn.Embedding(vocab, dim)
        self.fc = torch.nn.Linear(dim, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(tokens).mean(1))


def bag_data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 40, (n, 5), generator=g)
    return tokens, tokens[:, 0] % 3


def test_three_epochs_of_snapshots_land_as_one_family_of_the_session(tmp_path):
    from embedviz.server.pages.embeddings import families

    torch.manual_seed(0)
    model, (tokens, y) = Bag(), bag_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    snaps = Snapshots({"encoder": WORDS}, every=1)
    store = embedviz.open_store(tmp_path / "snap.db")
    store.create_session("s", name="bag")
    expected, iteration = [], 0
    for _epoch in range(3):
        for i in range(0, len(tokens), 32):
            loss = torch.nn.functional.cross_entropy(model(tokens[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            iteration += 1
        (snap,) = snaps.of_model(model, "s", iteration, "bag")
        store.put_embedding(snap)
        expected.append((iteration, model.encoder.weight.detach().clone().numpy()))
    sets = store.embeddings("s")
    assert [(e.name, e.iteration, e.n, e.dim) for e in sets] == [
        ("bag: encoder", it, 40, 8) for it, _ in expected]
    for info, (_, weight) in zip(sets, expected):
        got = store.embedding(info.key)
        assert got.labels == WORDS
        assert got.metadata["row"] == list(range(40))
        assert np.array_equal(got.vectors, weight)  # (copied: not the live weights)
    assert not np.allclose(expected[0][1], expected[-1][1])  # (they moved over training)
    fams = [f for f in families(sets) if len(families(sets)[f]) > 1]
    assert len(fams) == 1
    assert [e.iteration for e in families(sets)[fams[0]]] == [it for it, _ in expected]
    store.close()


def test_labels_a_list_a_dict_a_vocabulary_or_row_numbers():
    model = Bag(vocab=6)
    s = Snapshots({"encoder": ["a", "b", "c"]}, every=1)  # (shorter: row numbers beyond)
    assert s.of_model(model, "s", 0, "t")[0].labels == ["a", "b", "c", "3", "4", "5"]
    s = Snapshots({"encoder": {0: "pad", 2: "cat", "5": "dog"}}, every=1)
    assert s.of_model(model, "s", 0, "t")[0].labels == ["pad", "1", "cat", "3", "4", "dog"]
    s = Snapshots({"encoder": {"[PAD]": 0, "cat": 1, "dog": 5}}, every=1)  # tokenizer.get_vocab()
    assert s.of_model(model, "s", 0, "t")[0].labels == ["[PAD]", "cat", "2", "3", "4", "dog"]
    s = Snapshots({"encoder": None}, every=1)
    assert s.of_model(model, "s", 0, "t")[0].labels == ["0", "1", "2", "3", "4", "5"]
    assert Snapshots("encoder", 1).embeddings == Snapshots(["encoder"], 1).embeddings == {
        "encoder": None}
    assert Snapshots({"encoder": np.array(["x", "y"])}, 1).embeddings["encoder"] == ["x", "y"]


@pytest.mark.parametrize("bad, match", [
    ({"encoder": "idx2word"}, "must be a list"), ({"encoder": {"a": "b"}}, "not row indices"),
    (["encoder", 3], None), ("x", None)])
def test_bad_labels_say_what_to_pass(bad, match):
    if match is None:  # (names only: fine here, checked against the model later)
        Snapshots(bad, 1)
        return
    with pytest.raises(InvalidRecordError, match=match):
        Snapshots(bad, 1)


def test_bad_settings_fail_with_the_way_out():
    with pytest.raises(InvalidRecordError, match="dict"):
        Snapshots(3, 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError, match="snapshot_every"):
        Snapshots({"e": None}, -1)
    with pytest.raises(InvalidRecordError, match="max_rows"):
        Snapshots({"e": None}, 1, max_rows=0)
    assert not Snapshots(None, 5).due(5) and not Snapshots({"e": None}, 0).due(0)
    assert Snapshots({"e": None}, 5).due(10) and not Snapshots({"e": None}, 5).due(11)


def test_a_missing_module_is_named_with_the_models_embeddings():
    model = Bag()
    with pytest.raises(InvalidRecordError, match=r"'decoder' is no module.*'encoder'"):
        Snapshots({"decoder": None}, 1).of_model(model, "s", 0, "t")
    with pytest.raises(InvalidRecordError, match=r"'fc' is a Linear, not an embedding.*'encoder'"):
        Snapshots({"fc": None}, 1).of_model(model, "s", 0, "t")


def test_an_embedding_bag_and_wrapped_names():
    model = torch.nn.Sequential()
    model.add_module("bag", torch.nn.EmbeddingBag(10, 4))
    wrapped = torch.nn.Module()
    wrapped.module = model  # (as DistributedDataParallel holds it: "module.bag")
    for m in (model, wrapped):
        (snap,) = Snapshots({"bag": None}, 1).of_model(m, "s", 7, "t")
        assert (snap.name, snap.iteration, snap.vectors.shape) == ("t: bag", 7, (10, 4))
        assert np.array_equal(snap.vectors, model.bag.weight.detach().numpy())


def test_a_large_embedding_keeps_its_first_rows_and_stays_cheap():
    big = torch.nn.Sequential()
    big.add_module("tokens", torch.nn.Embedding(50_000, 64))
    snaps = Snapshots({"tokens": [f"t{i}" for i in range(50_000)]}, 1)
    snaps.of_model(big, "s", 0, "t")  # (warm)
    t0 = time.perf_counter()
    (snap,) = snaps.of_model(big, "s", 1, "t")
    seconds = time.perf_counter() - t0
    assert snap.vectors.shape == (5000, 64)
    assert snap.labels[-1] == "t4999" and snap.metadata["row"][-1] == 4999
    assert np.array_equal(snap.vectors, big.tokens.weight.detach()[:5000].numpy())
    assert seconds < 0.2, f"a 50,000 x 64 snapshot took {seconds:.3f} s"
    (small,) = Snapshots({"tokens": None}, 1, max_rows=100).of_model(big, "s", 1, "t")
    assert small.vectors.shape == (100, 64) and small.labels[-1] == "99"


# ---------------------------------------------------------------------- a layer's outputs
def digits_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                               torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


def test_outputs_of_a_layer_on_held_out_digits(digits):
    X, y = digits
    model = digits_net()
    model.train()
    model[2].eval()  # (a submodule the user keeps in eval(): kept so)
    snap = Snapshots(None, 0, max_rows=500).of_outputs(model, "3", X, y, "s", 12, "digits")
    assert snap.name == "digits: 3 outputs" and snap.session == "s" and snap.iteration == 12
    assert snap.vectors.shape == (500, 16)
    rows = snap.metadata["example"]
    assert rows[0] == 0 and rows[-1] == len(X) - 1 and rows == sorted(set(rows))
    with torch.no_grad():
        expected = model[:4].eval()(X[rows]).numpy()  # (eval: no dropout)
    model.train()
    model[2].eval()
    assert np.allclose(snap.vectors, expected, atol=1e-6)
    assert snap.metadata["label"] == [str(int(y[i])) for i in rows]
    assert snap.labels[:2] == [f"{int(y[rows[0]])} ({rows[0]})", f"{int(y[rows[1]])} ({rows[1]})"]
    assert len(set(snap.labels)) == 500  # (one label an example: the slider aligns by them)
    assert model.training and model[0].training and not model[2].training
    assert not any(m._forward_hooks for m in model.modules())
    assert torch.is_grad_enabled()


def test_outputs_labels_strings_none_and_shapes_flattened():
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    x = torch.randn(5, 1, 4, 4)
    snaps = Snapshots(None, 0)
    snap = snaps.of_outputs(conv, "0", x, ["a", "b", "c", "d", "e"], "s", 0, "c")
    assert snap.vectors.shape == (5, 8) and snap.metadata["label"] == ["a", "b", "c", "d", "e"]
    snap = snaps.of_outputs(conv, "2", x, None, "s", 0, "c")
    assert snap.labels == ["0", "1", "2", "3", "4"] and snap.vectors.shape == (5, 2)


def test_outputs_of_a_model_taking_keyword_inputs_and_giving_tuples():
    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(20, 4)
            self.rnn = torch.nn.GRU(4, 6, batch_first=True)

        def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(self.emb(input_ids) * mask[..., None])
            return out[:, -1]

    ids = torch.randint(0, 20, (30, 7))
    snap = Snapshots(None, 0, max_rows=10).of_outputs(
        Encoder(), "rnn", {"input_ids": ids, "mask": torch.ones(30, 7)}, torch.arange(30) % 2,
        "s", 0, "e")
    assert snap.vectors.shape == (10, 7 * 6)  # (the GRU's output sequence, flattened)
    assert snap.metadata["example"][-1] == 29


def test_outputs_errors_say_what_to_pass_and_leave_the_model_as_it_was(digits):
    X, y = digits
    model = digits_net()
    snaps = Snapshots(None, 0)
    with pytest.raises(InvalidRecordError, match=r"no module 'fc2'.*'0', '1'"):
        snaps.of_outputs(model, "fc2", X, y, "s", 0, "t")
    with pytest.raises(InvalidRecordError, match="3 labels for 1797 examples"):
        snaps.of_outputs(model, "3", X, y[:3], "s", 0, "t")
    with pytest.raises(RuntimeError):  # (the model's own error: shapes)
        snaps.of_outputs(model, "3", X[:, :10], None, "s", 0, "t")
    assert model.training and not any(m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------------- through the listener
wired = {"embeddings", "snapshot_every"} <= set(inspect.signature(StatsListener.__init__).parameters)


@pytest.mark.skipif(not wired, reason="StatsListener does not take embeddings= yet")
def test_the_listener_snapshots_an_embedding_over_three_epochs_for_the_slider(tmp_path, digits):
    from embedviz.server.pages.embeddings import families

    torch.manual_seed(0)
    model, (tokens, y) = Bag(), bag_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    store = embedviz.open_store(tmp_path / "l.db")
    per_epoch = len(tokens) // 32
    listener = StatsListener(store, 1, session="bag", session_name="bag", checks=False,
                             embeddings={"encoder": WORDS}, snapshot_every=per_epoch,
                             background="thread", budget=None)
    weights = {}
    with listener.attach(model, opt):
        for epoch in range(3):
            for i in range(0, len(tokens), 32):
                loss = torch.nn.functional.cross_entropy(model(tokens[i:i + 32]), y[i:i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
                listener.step(loss, batch_size=32, epoch=epoch)
                weights[listener.iteration - 1] = model.encoder.weight.detach().clone().numpy()
        listener.snapshot_outputs("fc", tokens, labels=y)
    listener.close()
    sets = [e for e in store.embeddings("bag") if e.name == "bag: encoder"]
    its = [e.iteration for e in sets]
    assert its == [0, per_epoch, 2 * per_epoch]
    for e in sets:
        got = store.embedding(e.key)
        assert got.labels == WORDS
        if e.iteration in weights:
            assert np.allclose(got.vectors, weights[e.iteration])
    # the explorer's snapshot slider: the encoder's three snapshots in one family, in order
    fams = families(store.embeddings("bag"))
    fam = [f for f in fams.values() if any(e.name == "bag: encoder" for e in f)]
    assert len(fam) == 1 and [(e.name, e.iteration) for e in fam[0]] == [
        ("bag: encoder", it) for it in its]
    outputs = [e for e in store.embeddings("bag") if e.name == "bag: fc outputs"]
    assert len(outputs) == 1 and outputs[0].n == len(tokens) and outputs[0].dim == 3
    store.close()
