"""A zoo of trainings (MLPs and CNNs) on scikit-learn's digits, broken on purpose and healthy, recorded with
StatsListener (its health checks on): what each check is for, and what must stay quiet.

    python examples/zoo.py [runs.db]      # then: embedviz doctor runs.db, or embedviz serve

Each broken run plants one fault and names what should find it: (check, layer, iteration).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from embedviz.monitor import StatsListener
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import embedviz

FREQUENCY = 5


@dataclass
class Run:
    """A training of the zoo: ``planted`` is (check, layer, iteration), or None if healthy."""

    name: str
    build: Callable[[], nn.Module]
    optimizer: Callable[[list], torch.optim.Optimizer]
    planted: tuple[str, str | None, int] | None = None
    iterations: int = 200
    train_size: int | None = None
    batch: int = 64
    schedule: Callable[[torch.optim.Optimizer], object] | None = None
    image: bool = False  # (inputs as 1x8x8 images, or 8 rows of 8 for an RNN: "rows")
    rows: bool = False
    gan: bool = False  # (a generator and a discriminator: two workers, "G" and "D", of one session)


class Poison(nn.Module):
    """Passes its input on, but makes it NaN from iteration ``at`` (counted in training
    forward passes): a NaN planted at a known layer and iteration."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls > self.at:
                return x * float("nan")
        return x


class RowRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 32, batch_first=True)
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x)[0][:, -1])


class TokenBag(nn.Module):
    """An embedding model: each image as a bag of (pixel, intensity) tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(64 * 17, 32, mode="mean")
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.arange(64) * 17 + (x * 16).round().long().clamp(0, 16)
        return self.out(self.embed(tokens))


def mlp(act: type[nn.Module] = nn.ReLU, hidden: int = 64, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 64
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), act()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 10))


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 16, 10))


def scaled(module: nn.Sequential, weight: float = 1.0, bias: float | None = None) -> nn.Sequential:
    with torch.no_grad():
        for m in module[:-1]:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(weight)
                if bias is not None:
                    m.bias.fill_(bias)
    return module


def poisoned() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), Poison(at=100), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 10))


def deep() -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU()]
    for _ in range(5):
        layers += [nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(64, 10))


class Conv1dNet(nn.Module):
    """Conv1d + BatchNorm over the digits as 8 rows of 8 (channels x length)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(8, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU(),
                                      nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU())
        self.out = nn.Linear(32 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x).flatten(1))


def warmup_cosine(warmup: int, total: int) -> Callable[[torch.optim.Optimizer], object]:
    """A linear warmup over ``warmup`` iterations, then a cosine decay to 0 at ``total``."""
    import math

    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (it - warmup) / max(1, total - warmup))))
    return lambda o: torch.optim.lr_scheduler.LambdaLR(o, factor)


def sgd(lr: float, momentum: float = 0.9) -> Callable[[list], torch.optim.Optimizer]:
    return lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum)


def adam(lr: float = 1e-3) -> Callable[[list], torch.optim.Optimizer]:
    return lambda p: torch.optim.Adam(p, lr=lr)


BROKEN = [
    Run("lr-too-high", lambda: mlp(nn.Tanh), sgd(4.0), ("loss_diverging", None, 0)),
    Run("lr-too-low", mlp, sgd(1e-5, 0.0), ("loss_flat", None, 0)),
    Run("lr-too-low-ratio", mlp, sgd(1e-5, 0.0), ("update_ratio_low", "0.weight", 0)),
    Run("tanh-saturated", lambda: scaled(mlp(nn.Tanh), weight=30.0), sgd(0.01), ("saturation", "1", 0)),
    Run("relu-dead", lambda: scaled(mlp(), bias=-10.0), sgd(0.05), ("dead_units", "1", 0)),
    Run("cnn-relu-dead", lambda: scaled(cnn(), bias=-10.0), sgd(0.05), ("dead_units", "1", 0),
        image=True),
    Run("nan-planted", poisoned, sgd(0.05), ("nan", "2", 100)),
    Run("overfitting", lambda: mlp(hidden=256), adam(3e-3), ("overfitting", None, 0), iterations=400,
        train_size=60, batch=60),
]
HEALTHY = [
    Run("healthy-sgd", mlp, sgd(0.05)),
    Run("healthy-adam", mlp, adam()),
    Run("healthy-adamw-cosine", mlp, lambda p: torch.optim.AdamW(p, lr=2e-3, weight_decay=1e-2),
        schedule=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 200)),
    Run("healthy-sgd-step", mlp, sgd(0.1), schedule=lambda o: torch.optim.lr_scheduler.StepLR(o, 70, 0.3)),
    Run("healthy-rmsprop", mlp, lambda p: torch.optim.RMSprop(p, lr=1e-3)),
    Run("healthy-cnn", cnn, adam(), image=True),
    Run("healthy-deep-bn", deep, sgd(0.05)),
    Run("healthy-tanh", lambda: mlp(nn.Tanh), sgd(0.05)),
    Run("healthy-gru", RowRNN, adam(3e-3), rows=True),
    Run("healthy-embedding", TokenBag, adam(1e-2)),
    # trainings that end near zero loss on noisy minibatches, under schedules: a loss of 0.01
    # that wobbles to 0.05 is not diverging
    Run("healthy-conv1d-bn-adamw-step", Conv1dNet,
        lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=5e-2), iterations=300, batch=16,
        schedule=lambda o: torch.optim.lr_scheduler.StepLR(o, 150, 0.3), rows=True),
    Run("healthy-near-zero-adam", lambda: mlp(hidden=128),
        lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=5e-2), iterations=300, batch=16),
    Run("healthy-warmup-cosine", lambda: mlp(hidden=128),
        lambda p: torch.optim.AdamW(p, lr=5e-3, weight_decay=5e-2), iterations=300, batch=16,
        schedule=warmup_cosine(30, 300)),
    Run("healthy-sgd-onecycle", mlp, sgd(0.05), iterations=300, batch=16,
        schedule=lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.1, total_steps=300)),
    Run("healthy-cnn-bn-step", lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten(),
        nn.Linear(32 * 16, 10)), sgd(0.05), iterations=300, batch=16, image=True,
        schedule=lambda o: torch.optim.lr_scheduler.StepLR(o, 100, 0.1)),
    # a GAN: its generator's and discriminator's losses are not meant to fall
    Run("healthy-gan", lambda: nn.Module(), adam(2e-3), iterations=300, gan=True),
]
# the overfitting run's planted iteration: where its validation loss is lowest (set when run)


def _data(run: Run) -> tuple[torch.Tensor, ...]:
    X, y = load_digits(return_X_y=True)
    Xtr, Xva, ytr, yva = train_test_split(X / 16.0, y, test_size=0.25, random_state=0)
    if run.train_size:
        Xtr, ytr = Xtr[:run.train_size], ytr[:run.train_size]
    shape = (-1, 1, 8, 8) if run.image else (-1, 8, 8) if run.rows else (-1, 64)
    return (torch.tensor(Xtr, dtype=torch.float32).reshape(shape), torch.tensor(ytr),
            torch.tensor(Xva, dtype=torch.float32).reshape(shape), torch.tensor(yva))


def train(store: embedviz.Store, run: Run, seed: int = 0) -> str:
    """Record ``run`` into ``store``; returns its session id."""
    if run.gan:
        return train_gan(store, run, seed)
    torch.manual_seed(seed)
    Xtr, ytr, Xva, yva = _data(run)
    model = run.build()
    opt = run.optimizer(list(model.parameters()))
    sched = run.schedule(opt) if run.schedule else None
    # (max_pending: room for every report and no cost budget, so a busy machine drops or
    # spaces none and the findings are the same on any machine)
    listener = StatsListener(store, FREQUENCY, session_name=run.name, num_classes=10,
                             tags={"zoo": "broken" if run.planted else "healthy"},
                             background="thread", max_pending=64, budget=None)
    gen = torch.Generator().manual_seed(seed)
    with listener.attach(model, opt):
        for it in range(run.iterations):
            idx = torch.randint(len(Xtr), (min(run.batch, len(Xtr)),), generator=gen)
            model.train()
            loss = nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            listener.step(loss, batch_size=len(idx))
            if it % 20 == 19:
                model.eval()
                with torch.no_grad():
                    listener.log_metric("val_loss", nn.functional.cross_entropy(model(Xva), yva))
    return listener.session


def train_gan(store: embedviz.Store, run: Run, seed: int = 0) -> str:
    """A small GAN on the digits (as dcgan does it: the discriminator's step, then the
    generator's), its two models recorded by two listeners as workers "G" and "D" of one
    session; its objective is not said: the checks see the two losses move against each other.
    (Recorded without the listeners' checks: each listener sees its own worker only, so its
    findings are computed from the stored session, as `embedviz doctor` does.)"""
    torch.manual_seed(seed)
    Xtr = _data(Run("data", mlp, sgd(0.0)))[0]
    G = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.Sigmoid())
    D = nn.Sequential(nn.Linear(64, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
    common = dict(tags={"zoo": "healthy"}, background="thread", max_pending=64, checks=False,
                  budget=None)
    lg = StatsListener(store, FREQUENCY, session_name=run.name, worker="G", **common)
    ld = StatsListener(store, FREQUENCY, session=lg.session, worker="D", **common)
    gen = torch.Generator().manual_seed(seed)
    bce = nn.functional.binary_cross_entropy_with_logits
    with lg.attach(G, opt_g), ld.attach(D, opt_d):
        for _ in range(run.iterations):
            real = Xtr[torch.randint(len(Xtr), (run.batch,), generator=gen)]
            fake = G(torch.randn(run.batch, 16, generator=gen))
            d_loss = bce(D(real), torch.ones(run.batch, 1)) + bce(D(fake.detach()), torch.zeros(run.batch, 1))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            ld.step(d_loss, batch_size=run.batch)
            g_loss = bce(D(fake), torch.ones(run.batch, 1))
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            lg.step(g_loss, batch_size=run.batch)
    return lg.session


def main(path: str = "zoo.db") -> None:
    with embedviz.open_store(path) as store:
        for run in BROKEN + HEALTHY:
            session = train(store, run)
            found = [f for _, f in store.findings(session)]
            print(f"{run.name:22s} planted {run.planted or '-'}: "
                  + (", ".join(f"{f.severity} {f.check} at {f.layer or '-'}, iteration {f.iteration}"
                               for f in found) or "no findings"), flush=True)
    print(f"\nembedviz doctor {path}   # the findings, worst first, with advice")


if __name__ == "__main__":
    main(*sys.argv[1:2])
