"""Vocabularies: labelled vectors from gensim models, files, arrays and torch embeddings.

:func:`load_vocabulary` accepts

- gensim ``Word2Vec``, ``FastText`` (anything with ``.wv``) and ``KeyedVectors`` objects;
- word2vec text (``.vec``, ``.txt``) and binary (``.bin``) files, read with gensim's loader
  after checking that the header's promise fits the file (before anything is allocated);
- TensorBoard projector TSV (``tensors.tsv``, with ``metadata.tsv`` beside it or given);
- a numpy array (or ``.npy`` file) with labels (a list or a file with one label a line);
- a torch ``nn.Embedding`` with its vocabulary (a list, or a dict word -> row).

gensim's pickled ``.model``/``.kv`` files run code when loaded, so they are only read when
``allow_pickle=True`` is passed; load such a model yourself and pass the object otherwise.

Every load is cleaned the same way and says what it did (:attr:`Vocabulary.notes`): words that
were not UTF-8 are decoded with replacement and counted; duplicate words keep their first
vector; NaN/Inf and all-zero vectors are dropped. Then the selection: ``top_n`` (in the
source's order, which for gensim is by frequency), ``include`` and ``exclude``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedviz.errors import ProjectionError
from embedviz.records import EmbeddingSet

log = logging.getLogger("embedviz")

REPLACEMENT = "\ufffd"


@dataclass
class Vocabulary:
    """``labels``: n strings; ``vectors``: ndarray of shape (n, dim), float32; ``metadata``:
    columns of n values (``count`` holds word frequencies when the source has them)."""

    labels: list[str]
    vectors: np.ndarray
    metadata: dict[str, list] = field(default_factory=dict)
    name: str = "vectors"
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def to_embedding_set(self, session: str | None = None, iteration: int | None = None):
        from embedviz.records import EmbeddingSet

        return EmbeddingSet(self.name, list(self.labels), self.vectors, dict(self.metadata),
                            session=session, iteration=iteration)

    def subset(self, index: Sequence[int] | np.ndarray) -> Vocabulary:
        index = np.asarray(index, dtype=np.int64)
        return Vocabulary([self.labels[i] for i in index], self.vectors[index],
                          {k: [v[i] for i in index] for k, v in self.metadata.items()},
                          self.name, list(self.notes))


def _note(notes: list[str], message: str) -> None:
    notes.append(message)
    log.info("embedviz: %s", message)


# ---------------------------------------------------------------------------- sources
def _from_keyed_vectors(kv: Any, name: str) -> Vocabulary:
    labels = [str(w) for w in kv.index_to_key]
    vectors = np.asarray(kv.vectors, dtype=np.float32)
    metadata: dict[str, list] = {}
    try:
        counts = [int(kv.get_vecattr(w, "count")) for w in kv.index_to_key]
        if any(counts):
            metadata["count"] = counts
    except (KeyError, AttributeError):
        pass
    return Vocabulary(labels, vectors[: len(labels)], metadata, name)


def _check_word2vec_header(path: Path, binary: bool) -> tuple[int, int]:
    """The header's (count, dim), refused when the file cannot hold that many vectors."""
    with open(path, "rb") as f:
        header = f.readline()
    if not header.strip():
        raise ProjectionError(f"{path} is empty" if path.stat().st_size == 0 else
                              f"{path}: the first line is blank; it should be "
                              "'<count> <dimensions>'")
    try:
        count, dim = (int(x) for x in header.split()[:2])
    except ValueError:
        raise ProjectionError(
            f"{path}: the first line should be '<count> <dimensions>' (got {header[:60]!r}): "
            "is this a word2vec file? For headerless GloVe text, add that line") from None
    if count < 1 or dim < 1:
        raise ProjectionError(f"{path}: the header promises {count} vectors of {dim} "
                              "dimensions: nothing to load")
    size = path.stat().st_size - len(header)
    # every vector needs at least a 1-byte word and a separator, plus 4 bytes (binary) or
    # 2 bytes ("0 ") per dimension in text
    least = count * (2 + dim * (4 if binary else 2))
    if size < least:
        raise ProjectionError(
            f"{path}: the header promises {count} vectors of {dim} dimensions, which need at "
            f"least {least:,} bytes, but the file holds {size:,} after the header: it is "
            "truncated or the header is wrong; fix the first line to the real count")
    return count, dim


def _first_bad_text_line(path: Path, dim: int, count: int, numbers: bool = True) -> str | None:
    """What is wrong with a word2vec text file (naming the line), or None.

    gensim's reader pads a short row with whatever it read before, silently: every row's
    length is checked here first."""
    seen = 0
    with open(path, "rb") as f:
        f.readline()
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                if seen < count:
                    return f"line {lineno} is blank (one vector a line, no blank lines)"
                continue
            seen += 1
            if seen > count:
                break
            parts = line.rstrip(b"\r\n").rstrip(b" ").split(b" ")
            if len(parts) != dim + 1 and b"\t" in line:
                return (f"line {lineno} is tab-separated: word2vec text separates the word and "
                        "its numbers with spaces (a TensorBoard projector's tensors.tsv is "
                        "read by that name)")
            if len(parts) != dim + 1:
                return (f"line {lineno} has {len(parts) - 1} numbers after the word, the "
                        f"header says {dim}")
            if numbers:
                try:
                    [float(p) for p in parts[1:]]
                except ValueError:
                    return f"line {lineno} holds something that is not a number"
    if seen < count:
        return (f"the file holds {seen} vectors, the header says {count}: make the header's "
                f"count {seen}")
    return None


def _binary_cut(path: Path, count: int, dim: int) -> str | None:
    """Where a word2vec binary file stops holding whole vectors ("vector N of M, 'word', is
    cut short at byte B"), or None; reads the file once, a block at a time."""
    size, step = path.stat().st_size, dim * 4
    with open(path, "rb") as f:
        f.readline()
        buf, at = b"", f.tell()
        for k in range(count):
            while True:
                space = buf.find(b" ")
                if space >= 0:
                    break
                more = f.read(1 << 20)
                if not more:
                    return (f"vector {k + 1:,} of {count:,} is missing (the file ends at byte "
                            f"{size:,})")
                buf += more
            word = buf[:space].lstrip(b"\n").decode("utf-8", "replace")
            start = at + space + 1
            while len(buf) < space + 1 + step:
                more = f.read(1 << 20)
                if not more:
                    return (f"vector {k + 1:,} of {count:,} ({word!r}, from byte {start:,}) is "
                            f"cut short: the file ends at byte {size:,}")
                buf += more
            buf = buf[space + 1 + step:]
            at = start + step
    return None


def _from_word2vec_file(path: Path, binary: bool, notes: list[str]) -> Vocabulary:
    from gensim.models import KeyedVectors

    try:
        count, dim = _check_word2vec_header(path, binary)
    except ProjectionError as size_error:
        # (a short row makes a small file look truncated: name the row when there is one)
        header = path.open("rb").readline().split()[:2]
        problem = (None if binary else _first_bad_text_line(path, int(header[1]), int(header[0]),
                                                            numbers=False)
                   if len(header) == 2 and all(h.isdigit() for h in header) else None)
        if problem and not problem.startswith("the file holds"):
            also = str(size_error).removeprefix(f"{path}: ")
            raise ProjectionError(f"{path}: {problem}: fix that line (and: {also})") from None
        if binary and len(header) == 2 and all(h.isdigit() for h in header):
            where = _binary_cut(path, int(header[0]), int(header[1]))
            if where:
                raise ProjectionError(f"{path}: {where}: the file is truncated, or the header's "
                                      "count is wrong") from None
        raise
    problem = None if binary else _first_bad_text_line(path, dim, count, numbers=False)
    if problem:
        raise ProjectionError(f"{path}: {problem}" + ("" if "header's count" in problem
                                                     else ": fix that line"))
    try:
        kv = KeyedVectors.load_word2vec_format(str(path), binary=binary, unicode_errors="replace")
    except (ValueError, EOFError) as exc:
        if binary:
            where = _binary_cut(path, count, dim)
            advice = ("the file is truncated, or the header's count is wrong" if where else
                      "is it word2vec text? (binary=False; --binary left out on the command line)")
        else:
            where = _first_bad_text_line(path, dim, count)
            advice = ("fix that line" if where else
                      "is it word2vec binary? (binary=True; --binary on the command line)")
        raise ProjectionError(f"{path}: cannot read it as word2vec {'binary' if binary else 'text'}"
                              f" ({where or exc}): {advice}") from None
    # gensim skips a duplicate word but leaves its slot empty (no word, a zero vector)
    filled = [i for i, w in enumerate(kv.index_to_key) if w is not None]
    vocab = _from_keyed_vectors(kv, path.stem)
    if len(filled) < count:
        _note(notes, f"{count - len(filled)} duplicate word(s) in {path.name}: kept the first "
                     "vector of each")
        vocab = vocab.subset(filled)
    return vocab


def _read_lines(path: Path, notes: list[str]) -> list[str]:
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    bad = text.count(REPLACEMENT) - raw.decode("utf-8", errors="ignore").count(REPLACEMENT)
    if bad:
        _note(notes, f"{path.name}: {bad} byte sequence(s) were not UTF-8 and were replaced by "
                     f"{REPLACEMENT!r}")
    return text.splitlines()


def read_projector_tsv(tensors: str | os.PathLike, metadata: str | os.PathLike | None = None,
                       notes: list[str] | None = None) -> Vocabulary:
    """TensorBoard projector files: ``tensors.tsv`` (one vector a line, tab-separated) and
    ``metadata.tsv`` (one label a line; with several columns, a header line first)."""
    notes = [] if notes is None else notes
    path = Path(tensors)
    rows = [line for line in _read_lines(path, notes) if line.strip()]
    try:
        vectors = np.array([[float(v) for v in line.split("\t")] for line in rows], dtype=np.float32)
    except ValueError:
        lengths = {len(line.split("\t")) for line in rows}
        for lineno, line in enumerate(rows, start=1):
            parts = line.split("\t")
            if len(parts) != len(rows[0].split("\t")):
                raise ProjectionError(f"{path}: line {lineno} has {len(parts)} values, line 1 has "
                                      f"{len(rows[0].split(chr(9)))}: every row needs the same "
                                      "dimension") from None
            try:
                [float(v) for v in parts]
            except ValueError:
                raise ProjectionError(f"{path}: line {lineno} holds something that is not a "
                                      "number (values are tab-separated)") from None
        raise ProjectionError(f"{path}: rows of {sorted(lengths)} values") from None
    meta_path = Path(metadata) if metadata is not None else path.with_name("metadata.tsv")
    labels = [str(i) for i in range(len(vectors))]
    columns: dict[str, list] = {}
    if meta_path.exists():
        lines = _read_lines(meta_path, notes)
        if lines and "\t" in lines[0]:
            header = lines[0].split("\t")
            body = [line.split("\t") for line in lines[1:]]
            columns = {h: [r[j] if j < len(r) else "" for r in body] for j, h in enumerate(header)}
            labels = columns.pop(header[0])
        else:
            labels = lines
        if len(labels) != len(vectors):
            raise ProjectionError(f"{meta_path} has {len(labels)} labels for {len(vectors)} "
                                  f"vectors in {path.name}: one label per vector")
    elif metadata is not None:
        raise ProjectionError(f"{meta_path} does not exist")
    return Vocabulary(labels, vectors, columns, path.stem, notes)


def write_projector_tsv(vocab: Vocabulary, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``tensors.tsv`` and ``metadata.tsv`` into ``folder`` (TensorBoard's projector
    reads them); returns both paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors, meta = out / "tensors.tsv", out / "metadata.tsv"
    np.savetxt(tensors, vocab.vectors, delimiter="\t", fmt="%.8g")
    clean = [lab.replace("\t", " ").replace("\n", " ") for lab in vocab.labels]
    with open(meta, "w", encoding="utf-8") as f:
        if vocab.metadata:
            cols = list(vocab.metadata)
            f.write("\t".join(["label"] + cols) + "\n")
            for i, lab in enumerate(clean):
                f.write("\t".join([lab] + [str(vocab.metadata[c][i]).replace("\t", " ")
                                           for c in cols]) + "\n")
        else:
            f.write("\n".join(clean) + "\n")
    return tensors, meta


def _labels_from(labels: Any, notes: list[str]) -> list[str]:
    if isinstance(labels, (str, os.PathLike)):
        return _read_lines(Path(labels), notes)
    if isinstance(labels, dict):  # word -> row
        out = [""] * len(labels)
        for word, row in labels.items():
            out[int(row)] = str(word)
        return out
    return [str(w) for w in labels]


# ---------------------------------------------------------------------------- cleaning
def _clean(vocab: Vocabulary) -> Vocabulary:
    notes = vocab.notes
    replaced = sum(REPLACEMENT in w for w in vocab.labels)
    if replaced and not any("UTF-8" in n for n in notes):
        _note(notes, f"{replaced} word(s) held bytes that were not UTF-8 (shown as {REPLACEMENT!r})")
    keep = np.ones(len(vocab), dtype=bool)
    seen: set[str] = set()
    dupes = 0
    for i, w in enumerate(vocab.labels):
        if w in seen:
            keep[i] = False
            dupes += 1
        seen.add(w)
    if dupes:
        _note(notes, f"{dupes} duplicate word(s): kept the first vector of each")
    finite = np.isfinite(vocab.vectors).all(axis=1)
    zero = ~np.any(vocab.vectors != 0, axis=1)
    for mask, what in ((~finite & keep, "NaN or Inf"), (zero & finite & keep, "all-zero")):
        if mask.any():
            words = [vocab.labels[i] for i in np.flatnonzero(mask)[:5]]
            _note(notes, f"dropped {int(mask.sum())} {what} vector(s), e.g. {words}")
    keep &= finite & ~zero
    return vocab if keep.all() else vocab.subset(np.flatnonzero(keep))


def select(vocab: Vocabulary, *, top_n: int | None = None, include: Iterable[str] = (),
           exclude: Iterable[str] = ()) -> Vocabulary:
    """The first ``top_n`` words not in ``exclude`` (the source's order: by frequency for
    gensim), plus every word of ``include`` that exists."""
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise ProjectionError(f"top_n must be a whole number >= 1 (got {top_n!r})")
    include, exclude = list(include), set(exclude)
    index = {w: i for i, w in enumerate(vocab.labels)}
    missing = [w for w in include if w not in index]
    if missing:
        _note(vocab.notes, f"{len(missing)} word(s) to include are not in the vocabulary: "
                           f"{missing[:10]}")
    candidates = [i for i, w in enumerate(vocab.labels) if w not in exclude]
    chosen = candidates if top_n is None else candidates[:top_n]
    have = set(chosen)
    chosen += [index[w] for w in include if w in index and index[w] not in have and w not in exclude]
    if not chosen:
        raise ProjectionError(f"the selection is empty (top_n={top_n}, {len(include)} included, "
                              f"{len(exclude)} excluded, {len(vocab)} words available): "
                              "widen it")
    return vocab if len(chosen) == len(vocab) else vocab.subset(chosen)


# ---------------------------------------------------------------------------- front door
def load_vocabulary(source: Any, *, labels: Any = None, metadata: Any = None,
                    binary: bool | None = None, top_n: int | None = None,
                    include: Iterable[str] = (), exclude: Iterable[str] = (),
                    allow_pickle: bool = False, name: str | None = None) -> Vocabulary:
    """Labelled vectors from any supported source, cleaned and selected (see module doc)."""
    notes: list[str] = []
    vocab: Vocabulary
    if isinstance(source, Vocabulary):
        vocab = Vocabulary(list(source.labels), source.vectors, dict(source.metadata),
                           source.name, notes)
    elif isinstance(source, EmbeddingSet):  # (a set read back from a store)
        vocab = Vocabulary(list(source.labels), source.vectors, dict(source.metadata),
                           source.name, notes)
    elif hasattr(source, "wv") and hasattr(source.wv, "index_to_key"):
        vocab = _from_keyed_vectors(source.wv, type(source).__name__)
    elif hasattr(source, "index_to_key") and hasattr(source, "vectors"):
        vocab = _from_keyed_vectors(source, type(source).__name__)
    elif _is_torch_embedding(source):
        if labels is None:
            raise ProjectionError("a torch nn.Embedding needs its vocabulary: pass labels= "
                                  "(a list of words, or a dict word -> row)")
        weights = source.weight.detach().float().cpu().numpy()
        vocab = Vocabulary(_labels_from(labels, notes), weights, {}, "nn.Embedding", notes)
    elif isinstance(source, np.ndarray) or (isinstance(source, (list, tuple)) and source
                                            and not isinstance(source[0], str)):
        if labels is None:
            raise ProjectionError("an array of vectors needs labels=: a list, or a file with "
                                  "one label a line")
        vocab = Vocabulary(_labels_from(labels, notes), np.asarray(source, dtype=np.float32),
                           {}, "array", notes)
    elif isinstance(source, (str, os.PathLike)):
        vocab = _from_path(Path(source), labels, metadata, binary, allow_pickle, notes)
    elif isinstance(source, dict) and source and all(isinstance(w, str) for w in source):
        rows = list(source.values())
        try:
            vectors = np.asarray(rows, dtype=np.float32)
        except ValueError:
            raise ProjectionError("a dict of word -> vector needs vectors of one length each "
                                  "(as lists or arrays of numbers)") from None
        vocab = Vocabulary(list(source), vectors, {}, "dict", notes)
    else:
        raise ProjectionError(f"cannot read vectors from a {type(source).__name__}: pass a "
                              "gensim model or KeyedVectors, a word2vec/TSV/.npy file, an "
                              "array with labels, a dict of word -> vector, or an "
                              "nn.Embedding with labels")
    vocab.notes = notes
    if name:
        vocab.name = name
    if vocab.vectors.ndim != 2 or vocab.vectors.shape[0] != len(vocab.labels):
        raise ProjectionError(f"{len(vocab.labels)} labels for vectors of shape "
                              f"{vocab.vectors.shape}: one label per row")
    if isinstance(metadata, dict):
        for col, values in metadata.items():
            if len(values) != len(vocab.labels):
                raise ProjectionError(f"metadata column {col!r} has {len(values)} values for "
                                      f"{len(vocab.labels)} words")
            vocab.metadata[col] = list(values)
    vocab.vectors = np.ascontiguousarray(vocab.vectors, dtype=np.float32)
    return select(_clean(vocab), top_n=top_n, include=include, exclude=exclude)


def _is_torch_embedding(obj: Any) -> bool:
    mod = type(obj).__module__
    return mod.startswith("torch.") and type(obj).__name__ == "Embedding"


def _from_path(path: Path, labels: Any, metadata: Any, binary: bool | None,
               allow_pickle: bool, notes: list[str]) -> Vocabulary:
    if not path.exists():
        raise ProjectionError(f"{path} does not exist: check the path")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".model", ".kv", ".pkl", ".pickle") or path.suffix == ".gz" and ".model" in suffix:
        if not allow_pickle:
            raise ProjectionError(f"{path} is a pickled gensim model: loading it runs code from "
                                  "the file. If you trust it, pass allow_pickle=True (CLI: "
                                  "--allow-pickle), or load it yourself and pass the object")
        from gensim.utils import SaveLoad

        obj = SaveLoad.load(str(path))
        kv = obj.wv if hasattr(obj, "wv") else obj
        return _from_keyed_vectors(kv, path.stem)
    if suffix == ".tsv":
        return read_projector_tsv(path, metadata if isinstance(metadata, (str, os.PathLike)) else None, notes)
    if suffix == ".npy":
        if labels is None:
            raise ProjectionError(f"{path}: a .npy array needs labels= (a file with one label a line)")
        try:
            vectors = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:  # (object arrays, a damaged file)
            raise ProjectionError(f"{path}: not a numeric .npy array ({exc}): save the vectors "
                                  "with np.save(path, vectors.astype(np.float32))") from None
        if vectors.dtype.kind not in "fiu":
            raise ProjectionError(f"{path}: holds {vectors.dtype} values, not numbers: save the "
                                  "vectors as floats")
        return Vocabulary(_labels_from(labels, notes), vectors, {}, path.stem, notes)
    if binary is None:
        binary = suffix == ".bin"
    return _from_word2vec_file(path, binary, notes)
