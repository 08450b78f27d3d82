"""The Hugging Face Trainer callback: a tiny randomly-initialised BERT, nothing downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import embedviz

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # (the Trainer needs it)


class Tokens(torch.utils.data.Dataset):
    """Sequences of 8 token ids; the label: whether token 7 occurs."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 100, (n, 8), generator=g)
        self.labels = (self.ids == 7).any(1).long() | (self.ids[:, 0] < 50).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long),
                "labels": self.labels[i]}


def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def train(tmp_path, callback, **options):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=20, logging_steps=2, report_to=[],
        use_cpu=True, eval_strategy="steps", eval_steps=10, per_device_train_batch_size=8,
        per_device_eval_batch_size=16, learning_rate=1e-3, save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, seed=0, **options)
    trainer = transformers.Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(160, 0),
                                   eval_dataset=Tokens(32, 1), callbacks=[callback])
    trainer.train()
    return trainer


def test_the_trainer_records_loss_lr_layers_and_eval_metrics(tmp_path):
    from embedviz.monitor.hf import StatsCallback

    store = embedviz.open_store(tmp_path / "hf.db")
    words = {f"tok{i}": i for i in range(100)}  # (a tokenizer's get_vocab(): {token: id})
    trainer = train(tmp_path, StatsCallback(store, 2, session="hf", max_pending=1000,
                                            background="thread", checks=False, budget=None,
                                            embeddings={"bert.embeddings.word_embeddings": words},
                                            snapshot_every=10))
    score = store.read_series("hf", "score")
    assert score.iterations.tolist() == list(range(0, 20, 2))
    assert np.all(np.isfinite(score.values)) and np.all(score.values > 0)
    # the score is each step's own loss: the Trainer's logged loss (the mean over 2 steps)
    # is the mean of the step losses, of which the score holds every other one
    logged = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    train_loss = store.read_series("hf", "metric/train_loss")
    assert train_loss.iterations.tolist() == [s - 1 for s in sorted(logged)]
    assert np.allclose(train_loss.values, [logged[s] for s in sorted(logged)], rtol=1e-4)
    assert len(store.read_series("hf", "metric/grad_norm")) == 10
    # the learning rate: linear decay from 1e-3 (after the scheduler's step)
    lr = store.read_series("hf", "lr/0")
    assert len(lr) == 10 and lr.values[0] <= 1e-3 and np.all(np.diff(lr.values) < 0)
    keys = store.series_keys("hf")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    for kind in ("param", "gradient", "update"):
        assert f"{kind}/{name}/mean_magnitude" in keys
    assert np.all(store.read_series("hf", f"update/{name}/mean_magnitude").values > 0)
    assert any(k.startswith("activation/bert.encoder.layer.0") for k in keys)
    eval_loss = store.read_series("hf", "metric/eval_loss")
    assert eval_loss.iterations.tolist() == [9, 19] and np.all(eval_loss.values > 0)
    assert not any("runtime" in k or "per_second" in k for k in keys)
    assert store.read_series("hf", "timing/examples_per_s").values[-1] > 0
    snaps = store.embeddings("hf")
    assert [(e.name, e.iteration, e.n, e.dim) for e in snaps] == [
        ("hf: bert.embeddings.word_embeddings", it, 100, 16) for it in (0, 10)]
    assert store.embedding(snaps[-1].key).labels[:2] == ["tok0", "tok1"]
    static = store.static("hf")
    assert static["model"]["type"] == "BertForSequenceClassification"
    store.close()


@pytest.mark.slow
def test_gradient_accumulation_records_one_report_per_optimizer_step(tmp_path):
    from embedviz.monitor.hf import StatsCallback

    store = embedviz.open_store(tmp_path / "acc.db")
    trainer = train(tmp_path, StatsCallback(store, 1, session="acc", max_pending=1000,
                                            background="thread", checks=False, budget=None),
                    gradient_accumulation_steps=2)
    score = store.read_series("acc", "score")
    assert score.iterations.tolist() == list(range(20))
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # the Trainer's logged loss of steps 2k-1, 2k: the mean of their scores (each step's
    # score: what the Trainer adds up for its log; transformers 5 sums the micro-batch means
    # of a model that takes num_items_in_batch but ignores it, as BERT's classifier does)
    assert np.allclose(score.values.reshape(10, 2).mean(1), logged, rtol=1e-3)
    assert store.read_series("acc", "timing/examples_per_s").values[-1] > 0
    store.close()


def test_the_import_error_says_how_to_install(monkeypatch):
    import builtins
    import importlib
    import sys

    real = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "embedviz.monitor.hf", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ImportError, match=r'pip install "embedviz\[hf\]"'):
        importlib.import_module("embedviz.monitor.hf")
