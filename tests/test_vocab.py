"""Loading vocabularies: every source, and bad input named clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors
from gensim.test.utils import datapath

import embedviz
from embedviz.errors import ProjectionError
from embedviz.vocab import load_vocabulary, read_projector_tsv, write_projector_tsv

LEE_VEC = datapath("lee_fasttext.vec")


def test_gensim_objects_and_files_agree():
    kv = KeyedVectors.load_word2vec_format(LEE_VEC)
    from_file = load_vocabulary(LEE_VEC, top_n=100)
    from_kv = load_vocabulary(kv, top_n=100)
    assert from_file.labels == kv.index_to_key[:100] == from_kv.labels
    assert np.allclose(from_file.vectors, kv.vectors[:100])
    bin_path = datapath("lee_fasttext.vec") + ".bin"
    kv.save_word2vec_format(bin_path, binary=True)
    assert load_vocabulary(bin_path, top_n=100).labels == from_file.labels


def test_word2vec_model_carries_frequencies(tmp_path):
    from gensim.models import Word2Vec
    from gensim.utils import simple_preprocess

    with open(datapath("lee_background.cor"), encoding="utf-8") as f:
        corpus = [simple_preprocess(line) for line in f]
    model = Word2Vec(corpus, vector_size=16, min_count=5, epochs=1, workers=1, seed=0)
    v = load_vocabulary(model, top_n=50, include=["australia"], exclude=["the"])
    assert "the" not in v.labels and "australia" in v.labels and len(v) == 50
    assert v.metadata["count"][0] >= v.metadata["count"][1]


def test_projector_tsv_round_trip(tmp_path):
    v = load_vocabulary(LEE_VEC, top_n=30, metadata=None)
    v.metadata["count"] = list(range(30))
    tensors, meta = write_projector_tsv(v, tmp_path / "proj")
    back = read_projector_tsv(tensors)
    assert back.labels == v.labels and back.metadata["count"] == [str(i) for i in range(30)]
    assert np.allclose(back.vectors, v.vectors, atol=1e-6)


def test_array_and_torch_embedding_with_labels(tmp_path):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("a\nb\nc\n")
    arr = np.eye(3, 4, dtype=np.float32) + 0.5
    assert load_vocabulary(arr, labels=labels_file).labels == ["a", "b", "c"]
    np.save(tmp_path / "v.npy", arr)
    assert load_vocabulary(tmp_path / "v.npy", labels=["x", "y", "z"]).dim == 4
    emb = torch.nn.Embedding(3, 5)
    v = load_vocabulary(emb, labels={"cat": 2, "dog": 0, "eel": 1})
    assert v.labels == ["dog", "eel", "cat"]
    assert np.allclose(v.vectors[2], emb.weight[2].detach().numpy())
    with pytest.raises(ProjectionError, match="needs its vocabulary"):
        load_vocabulary(emb)


def _write(path, text: bytes):
    path.write_bytes(text)
    return path


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ProjectionError, match="header promises 1000000 vectors.*truncated"):
        load_vocabulary(_write(tmp_path / "h.vec", b"1000000 300\nthe 0.1 0.2\n"))
    short = b"3 4\na 1 2 3 4\nb 1 2 3\nc 1 2 3 4\n"  # (short enough to look truncated)
    with pytest.raises(ProjectionError, match="line 3 has 3 numbers after the word, the header says 4"):
        load_vocabulary(_write(tmp_path / "s.vec", short))
    rows = b"".join(w + b" " + np.arange(4, dtype=np.float32).tobytes() for w in (b"aa", b"bb", b"cc"))
    with pytest.raises(ProjectionError, match=r"vector 3 of 3 \('cc', from byte 45\) is cut short"):
        load_vocabulary(_write(tmp_path / "cut.bin", b"3 4\n" + rows[:-10]), binary=True)
    with pytest.raises(ProjectionError, match="line 3 is blank"):
        load_vocabulary(_write(tmp_path / "b.vec", b"3 2\nthe 0.1 0.2\n\ncat 0.3 0.4\ndog 0.5 0.6\n"))
    with pytest.raises(ProjectionError, match="line 2 is tab-separated"):
        load_vocabulary(_write(tmp_path / "t.vec", b"1 2\nthe\t0.1\t0.2\n"))
    with pytest.raises(ProjectionError, match="holds 1 vectors, the header says 2: make the header's count 1"):
        load_vocabulary(_write(tmp_path / "c.vec", b"2 1\nthe 0.10000\n"))
    with pytest.raises(ProjectionError, match="is empty"):
        load_vocabulary(_write(tmp_path / "e.bin", b""), binary=True)
    bad_row = b"3 2\nthe 0.1 0.2\ncat 0.3\ndog 0.5 0.6\n"
    with pytest.raises(ProjectionError, match="line 3 has 1 numbers after the word, the header says 2"):
        load_vocabulary(_write(tmp_path / "r.vec", bad_row))
    with pytest.raises(ProjectionError, match="first line should be"):
        load_vocabulary(_write(tmp_path / "g.txt", b"the 0.1 0.2\n"))
    with pytest.raises(ProjectionError, match="pickled gensim model.*allow_pickle=True"):
        load_vocabulary(_write(tmp_path / "m.model", b"\x80\x04junk"))
    with pytest.raises(ProjectionError, match="does not exist"):
        load_vocabulary(tmp_path / "nope.vec")
    with pytest.raises(ProjectionError, match="selection is empty"):
        load_vocabulary(LEE_VEC, top_n=2, exclude=load_vocabulary(LEE_VEC).labels)
    with pytest.raises(ProjectionError, match="labels="):
        load_vocabulary(np.zeros((2, 2)))


def test_messy_vectors_are_cleaned_and_reported(tmp_path):
    text = ("5 2\nthe 0.1 0.2\ncaf\xe9 0.3 0.4\nthe 0.9 0.9\nnan_word nan 0.1\nzero 0 0\n"
            "<b>bold</b> 0.5 0.7\n").encode("latin-1")
    v = load_vocabulary(_write(tmp_path / "m.vec", text.replace(b"5 2", b"6 2")))
    assert v.labels == ["the", "caf\ufffd", "<b>bold</b>"]
    notes = " | ".join(v.notes)
    assert "not UTF-8" in notes and "duplicate" in notes
    assert "NaN or Inf" in notes and "all-zero" in notes
    assert v.vectors[0].tolist() == pytest.approx([0.1, 0.2])  # the first 'the' is kept


def test_embedviz_front_door_stays_light():
    import subprocess
    import sys

    code = "import sys, embedviz; print(sorted(m for m in ('openTSNE', 'bokeh', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert embedviz.load_vocabulary is load_vocabulary


def test_an_npy_file_of_objects_or_strings_gets_a_clear_error(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(tmp_path / "str.npy", np.array([["a", "b"], ["c", "d"]]))
    for name in ("obj.npy", "str.npy"):
        with pytest.raises(ProjectionError, match="not a numeric .npy|not numbers"):
            load_vocabulary(tmp_path / name, labels=["x", "y"])


def test_a_set_read_back_from_a_store_loads_with_its_name_and_metadata():
    import numpy as np

    from embedviz.records import EmbeddingSet

    e = EmbeddingSet("mine", [f"w{i}" for i in range(20)], np.random.default_rng(0).normal(size=(20, 4)),
                     metadata={"count": list(range(20))})
    vocab = embedviz.load_vocabulary(e)
    assert vocab.name == "mine" and vocab.labels == e.labels and vocab.metadata["count"] == list(range(20))


def test_a_dict_of_words_and_vectors_is_a_vocabulary():
    v = load_vocabulary({"<b>x</b>": [1.0, 0.0], "y": np.array([0.0, 1.0])})
    assert v.labels == ["<b>x</b>", "y"] and v.vectors.shape == (2, 2)
    with pytest.raises(ProjectionError, match="one length each"):
        load_vocabulary({"x": [1.0, 0.0], "y": [1.0]})
