"""torch.distributed: one session for the job, a worker a rank (torchrun, gloo, CPU)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from embedviz.monitor._distributed import elastic_session_id, identify
from embedviz.monitor.listener import StatsListener

import embedviz
from embedviz.errors import InvalidRecordError

pytestmark = pytest.mark.skipif(not __import__("torch").distributed.is_available(),
                                reason="torch.distributed is not available")


def torchrun(tmp_path, script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``script`` run by ``torchrun --nproc-per-node 2 --standalone`` (gloo, CPU)."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_RUN_ID"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--standalone", str(path), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


# ---------------------------------------------------------------------- outside a job
def test_outside_a_job_the_session_and_worker_are_as_given(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")  # (not in a process group: unused)
    me = identify(None, None)
    assert (me.session, me.worker, me.info, me.records) == (None, "0", {}, True)
    me = identify("s", 3, "zero")
    assert (me.session, me.worker, me.info, me.records) == ("s", "3", {}, True)


@pytest.mark.parametrize("ranks", ["first", "", None, 0, "ALL"])
def test_ranks_must_be_all_or_zero_and_the_error_says_so(ranks):
    with pytest.raises(InvalidRecordError, match="'all'.*'zero'"):
        identify(None, None, ranks)


def test_the_elastic_run_id_gives_a_valid_session_id_and_none_is_no_id(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert elastic_session_id() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert elastic_session_id() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", " my job 7 ")
    assert elastic_session_id() == "torchrun-my_job_7"
    embedviz.records.Session(id=elastic_session_id())  # (a valid session id)


# ---------------------------------------------------------------------- in a job
IDENTIFY = """
    import json, os, sys
    import torch.distributed as dist
    from embedviz.monitor._distributed import identify

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = {"run_id": os.environ.get("TORCHELASTIC_RUN_ID")}
    me = identify(None, None)
    out["elastic"] = [me.session, me.worker, me.info, me.records]
    os.environ.pop("TORCHELASTIC_RUN_ID")  # (as under a launcher without a run id)
    me = identify(None, None)
    out["broadcast"] = [me.session, me.worker, me.info, me.records]
    os.environ["TORCHELASTIC_RUN_ID"] = "none"
    me = identify(None, None, "zero")
    out["zero"] = [me.session, me.worker, me.info, me.records]
    me = identify("given", f"w{rank}")
    out["given"] = [me.session, me.worker, me.info, me.records]
    with open(f"{sys.argv[1]}.{rank}.json", "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_identify_agrees_on_one_session_across_two_ranks(tmp_path):
    torchrun(tmp_path, IDENTIFY, str(tmp_path / "who"))
    r0, r1 = (json.loads((tmp_path / f"who.{r}.json").read_text()) for r in (0, 1))
    assert r0["run_id"] == r1["run_id"] and r0["run_id"] not in (None, "none")  # (--standalone)
    # from the elastic run id: the same on both ranks, without a collective
    assert r0["elastic"][0] == r1["elastic"][0] == "torchrun-" + r0["run_id"]
    assert [r0["elastic"][1], r1["elastic"][1]] == ["0", "1"]
    for rank, r in enumerate((r0, r1)):
        assert r["elastic"][2] == {"rank": rank, "world_size": 2, "local_rank": rank,
                                   "backend": "gloo", "ranks": "all"}
        assert r["elastic"][3] is True
    # made by rank 0 and broadcast: the same on both ranks, a new one each time
    assert r0["broadcast"][0] == r1["broadcast"][0]
    assert r0["zero"][0] == r1["zero"][0]
    assert len({r0["elastic"][0], r0["broadcast"][0], r0["zero"][0]}) == 3
    embedviz.records.Session(id=r0["broadcast"][0])
    # ranks="zero": rank 0 only records
    assert [r0["zero"][3], r1["zero"][3]] == [True, False]
    assert r1["zero"][2]["ranks"] == "zero"
    # given: kept
    assert [r0["given"][:2], r1["given"][:2]] == [["given", "w0"], ["given", "w1"]]


# ---------------------------------------------------------------------- the listener, end to end
TRAIN = """
    import json, sys
    import torch
    import torch.distributed as dist
    import embedviz
    from embedviz.monitor import StatsListener

    store_path, ranks = sys.argv[1], sys.argv[2]
    out = sys.argv[3] if len(sys.argv) > 3 else store_path  # (where a store URL is no path)
    background = sys.argv[4] if len(sys.argv) > 4 else "thread"
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # (one model: DDP checks that the ranks start the same)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    X = torch.randn(64, 8, generator=g)
    y = X[:, :1] * (1.0 + rank) + 0.1 * torch.randn(64, 1, generator=g)
    listener = StatsListener(store_path, frequency=1, ranks=ranks, max_pending=1000,
                             background=background, checks=False, budget=None)
    losses = []
    with listener.attach(model, opt):
        for i in range(12):
            idx = torch.arange(i * 4, i * 4 + 16) % 64
            loss = torch.nn.functional.mse_loss(ddp(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            listener.step(loss, batch_size=16)
            losses.append(loss.item())
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump({"losses": losses, "session": listener.session}, f)
    dist.destroy_process_group()
"""

wired = "ranks" in inspect.signature(StatsListener.__init__).parameters


@pytest.mark.slow
@pytest.mark.skipif(not wired, reason="StatsListener does not take ranks= yet")
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_torchrun_two_ranks_record_one_session_with_a_worker_each(tmp_path, backend, request):
    """Two ranks write one session at once: into one SQLite file (a thread each), into a
    PostgreSQL server (each rank's listener a worker process that reopens the store)."""
    if backend == "postgres":
        target = request.getfixturevalue("postgres_url")
        torchrun(tmp_path, TRAIN, target, "all", str(tmp_path / "runs.db"), "process")
    else:
        target = str(tmp_path / "runs.db")
        torchrun(tmp_path, TRAIN, target, "all")
    logged = [json.loads((tmp_path / f"runs.db.{r}.json").read_text()) for r in (0, 1)]
    store = embedviz.open_store(target)
    sessions = store.sessions()
    assert len(sessions) == 1
    session = sessions[0]
    assert logged[0]["session"] == logged[1]["session"] == session.id
    assert [w.worker for w in session.workers] == ["0", "1"]
    assert not np.allclose(logged[0]["losses"], logged[1]["losses"])  # (the ranks' own data)
    for rank in (0, 1):
        score = store.read_series(session.id, "score", worker=str(rank))
        assert score.iterations.tolist() == list(range(12))
        assert np.allclose(score.values, logged[rank]["losses"], rtol=1e-6)
        static = store.static(session.id, str(rank))
        assert static["distributed"]["rank"] == rank
        assert static["distributed"]["world_size"] == 2
        assert static["distributed"]["backend"] == "gloo"
        assert len(store.read_series(session.id, "update/0.weight/mean_magnitude",
                                     worker=str(rank))) == 12
    store.close()


@pytest.mark.slow
def test_torchrun_two_ranks_post_through_a_server_into_postgresql(tmp_path, postgres_url, monkeypatch):
    """The ranks post to `embedviz serve` (the router), which writes into PostgreSQL."""
    from tests.test_ingest import Serve

    with Serve(postgres_url, tmp_path) as server:
        monkeypatch.setenv("EMBEDVIZ_TOKEN_FILE", str(server.token_file))
        torchrun(tmp_path, TRAIN, server.url, "all", str(tmp_path / "posted"))
    logged = [json.loads((tmp_path / f"posted.{r}.json").read_text()) for r in (0, 1)]
    with embedviz.open_store(postgres_url, readonly=True) as store:
        (session,) = store.sessions()
        assert logged[0]["session"] == logged[1]["session"] == session.id
        assert [w.worker for w in session.workers] == ["0", "1"]
        for rank in (0, 1):
            score = store.read_series(session.id, "score", worker=str(rank))
            assert score.iterations.tolist() == list(range(12))  # (each once)
            assert np.allclose(score.values, logged[rank]["losses"], rtol=1e-6)
            assert store.static(session.id, str(rank))["distributed"]["rank"] == rank


@pytest.mark.slow
@pytest.mark.skipif(not wired, reason="StatsListener does not take ranks= yet")
def test_torchrun_with_ranks_zero_records_rank_zero_only(tmp_path):
    db = tmp_path / "zero.db"
    torchrun(tmp_path, TRAIN, str(db), "zero")
    logged = json.loads((tmp_path / "zero.db.0.json").read_text())
    store = embedviz.open_store(db)
    (session,) = store.sessions()
    assert [w.worker for w in session.workers] == ["0"]
    score = store.read_series(session.id, "score", worker="0")
    assert np.allclose(score.values, logged["losses"], rtol=1e-6)
    assert store.static(session.id, "0")["distributed"]["ranks"] == "zero"
    store.close()
