from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import embedviz
from embedviz.records import Histogram, Summary, Update

sys.path.insert(0, str(Path(__file__).parent))  # (tests/pgcluster.py)

BACKENDS = ["memory", "sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg_cluster():
    """A throw-away PostgreSQL server for the session's tests (tests/pgcluster.py); skipped
    with the reason where none can be started, unless EMBEDVIZ_REQUIRE_POSTGRES=1 (CI)."""
    from pgcluster import Cluster

    try:
        cluster = Cluster()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("EMBEDVIZ_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield cluster
    cluster.close()


@pytest.fixture
def postgres_url(pg_cluster):
    """The URL of a new, empty PostgreSQL store (a schema of its own)."""
    return pg_cluster.url()


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    """The same store contract, once per backend."""
    if request.param == "postgres":
        target = request.getfixturevalue("postgres_url")
    else:
        target = ":memory:" if request.param == "memory" else str(tmp_path / "runs.db")
    s = embedviz.open_store(target)
    yield s
    s.close()


def make_summary(rng: np.random.Generator, *, bins: int = 20, scale: float = 1.0) -> Summary:
    values = rng.normal(0, scale, size=200)
    counts, edges = np.histogram(values, bins=bins)
    return Summary(count=values.size, mean=values.mean(), stdev=values.std(),
                   mean_magnitude=np.abs(values).mean(), min=values.min(), max=values.max(),
                   zero_fraction=0.0, histogram=Histogram(edges, counts))


def make_update(session: str, iteration: int, rng: np.random.Generator, *, worker: str = "0",
                layers: int = 3, score: float | None = None) -> Update:
    summaries = {}
    for layer in range(layers):
        for kind in ("param", "gradient", "update"):
            summaries[f"{kind}/fc{layer}.weight"] = make_summary(rng)
        summaries[f"activation/fc{layer}"] = make_summary(rng)
    return Update(session, worker, iteration, score=1.0 / (1 + iteration) if score is None else score,
                  epoch=iteration // 100, scalars={"lr/0": 0.01, "timing/iteration_ms": 5.0},
                  summaries=summaries)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as (inputs in [0, 1], labels) tensors."""
    X, y = load_digits(return_X_y=True)
    return torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


@pytest.fixture(autouse=True)
def _no_listener_left_hooked(request):
    """A test leaves no listener hooked into torch (module hooks are global: one left behind
    would run in every later test's models)."""
    from torch.nn.modules.module import _global_forward_hooks

    before = set(_global_forward_hooks)
    yield
    left = [k for k in _global_forward_hooks if k not in before]
    for k in left:  # (so that one leak fails one test, not every later one)
        _global_forward_hooks.pop(k, None)
    assert not left, f"{request.node.name} left a listener's forward hook in place: remove() it"
