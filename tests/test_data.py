"""`mechscope.data`: local text files -> fixed-length token contexts, split and shuffled by seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mechscope.data import (
    DataConfig,
    find_sources,
    load_tokens,
    read_documents,
    stdlib_documents,
    token_stream,
    write_stdlib_corpus,
)
from mechscope.errors import MechscopeError
from tests.lens.helpers import text_tokenizer

DOCS = ["the cat sat on the mat " * 5, "a dog ran in the park " * 7, "birds fly over the sea " * 6]


@pytest.fixture(scope="module")
def tok():
    return text_tokenizer()


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(DOCS):
        (folder / f"doc{i}.txt").write_text(text)
    return folder


def test_txt_folder_reads_every_file_in_sorted_order(tmp_path, tok):
    write_corpus(tmp_path / "c")
    (tmp_path / "c" / "ignored.bin").write_bytes(b"\x00\x01")
    assert [p.name for p in find_sources(tmp_path / "c")] == ["doc0.txt", "doc1.txt", "doc2.txt"]
    assert list(read_documents(tmp_path / "c")) == DOCS
    stream, n_docs = token_stream(DOCS, tok)
    sep = tok.sep_token_id  # WordPiece has no EOS: documents are separated by SEP
    assert n_docs == 3 and stream[0] == sep and stream[-1] == sep and int((stream == sep).sum()) == 4
    one = tok(DOCS[0], add_special_tokens=False)["input_ids"]
    assert stream[1 : 1 + len(one)].tolist() == one


def test_contexts_cover_the_stream_and_split_by_seed(tmp_path, tok):
    write_corpus(tmp_path / "c")
    cfg = DataConfig(str(tmp_path / "c"), ctx_len=8, heldout_fraction=0.25, seed=3)
    data = load_tokens(cfg, tok)
    n = data.n_tokens // 8
    assert data.train.shape == (n - round(n * 0.25), 8) and data.heldout.shape == (round(n * 0.25), 8)
    assert data.train.dtype == torch.long and data.n_documents == 3
    stream, _ = token_stream(DOCS, tok)
    windows = stream[: n * 8].view(n, 8)
    everything = sorted(map(tuple, torch.cat([data.train, data.heldout]).tolist()))
    assert everything == sorted(map(tuple, windows.tolist()))
    # held-out contexts keep corpus order
    positions = [next(i for i, w in enumerate(windows.tolist()) if w == h) for h in data.heldout.tolist()]
    assert positions == sorted(positions)


def test_loading_is_deterministic_and_the_seed_matters(tmp_path, tok):
    write_corpus(tmp_path / "c")
    cfg = DataConfig(str(tmp_path / "c"), ctx_len=4, heldout_fraction=0.2, seed=0)
    a, b = load_tokens(cfg, tok), load_tokens(cfg, tok)
    assert torch.equal(a.train, b.train) and torch.equal(a.heldout, b.heldout)
    c = load_tokens(DataConfig(str(tmp_path / "c"), ctx_len=4, heldout_fraction=0.2, seed=1), tok)
    assert not torch.equal(a.train, c.train)


def test_jsonl_with_a_configurable_text_field(tmp_path, tok):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS)) + "\n\n")
    assert list(read_documents(path, "body")) == DOCS
    from_txt = load_tokens(DataConfig(str(write_corpus(tmp_path / "c")), ctx_len=8), tok)
    from_jsonl = load_tokens(DataConfig(str(path), ctx_len=8, text_field="body"), tok)
    assert torch.equal(from_txt.train, from_jsonl.train)
    with pytest.raises(MechscopeError, match=r"corpus.jsonl:1: no 'text' field \(has: body, id\)"):
        load_tokens(DataConfig(str(path), ctx_len=8), tok)


def test_glob_and_max_tokens(tmp_path, tok):
    write_corpus(tmp_path / "c")
    assert [p.name for p in find_sources(str(tmp_path / "c" / "doc[12].txt"))] == ["doc1.txt", "doc2.txt"]
    data = load_tokens(DataConfig(str(tmp_path / "c" / "*.txt"), ctx_len=5, max_tokens=23, heldout_fraction=0), tok)
    assert data.n_tokens == 23 and data.train.shape == (4, 5) and data.heldout.shape == (0, 5)


def test_clear_errors_for_missing_or_empty_sources(tmp_path, tok):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.bin").write_bytes(b"x")
    with pytest.raises(MechscopeError, match="no readable text in folder"):
        load_tokens(DataConfig(str(tmp_path / "empty")), tok)
    with pytest.raises(MechscopeError, match="no files match"):
        load_tokens(DataConfig(str(tmp_path / "*.jsonl")), tok)
    with pytest.raises(MechscopeError, match="no such file"):
        load_tokens(DataConfig(str(tmp_path / "missing.txt")), tok)
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    with pytest.raises(MechscopeError, match="no text found"):
        load_tokens(DataConfig(str(tmp_path / "blank")), tok)
    (tmp_path / "short.txt").write_text("hi")
    with pytest.raises(MechscopeError, match="not enough for one context"):
        load_tokens(DataConfig(str(tmp_path / "short.txt"), ctx_len=64), tok)
    with pytest.raises(MechscopeError, match="ctx_len"):
        DataConfig("x", ctx_len=0)


def test_parquet_is_read_or_pyarrow_is_named(tmp_path):
    path = tmp_path / "t.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(MechscopeError, match="needs pyarrow"):
            list(read_documents(path))
        return
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["first doc", "second", "third one"]}), path, row_group_size=2)
    assert list(read_documents(path)) == ["first doc", "second", "third one"]
    assert list(read_documents(path, text_field="id")) == ["1", "2", "3"]
    with pytest.raises(MechscopeError, match=r"no 'body' column \(has: id, text\)"):
        list(read_documents(path, text_field="body"))


def test_datasets_folder_is_read_or_datasets_is_named(tmp_path):
    folder = tmp_path / "ds"
    try:
        import datasets
    except ImportError:
        folder.mkdir()
        (folder / "dataset_info.json").write_text("{}")
        with pytest.raises(MechscopeError, match="pip install datasets"):
            list(read_documents(folder))
        return
    import pyarrow as pa
    from datasets.table import InMemoryTable

    def dataset(columns, name):  # a fixed fingerprint: no hashing of the table at construction
        return datasets.Dataset(InMemoryTable(pa.table(columns)), fingerprint=name)

    splits = datasets.DatasetDict(
        {"validation": dataset({"text": ["v"]}, "v"), "train": dataset({"text": ["a", "b"], "n": [1, 2]}, "t")}
    )
    splits.save_to_disk(str(folder))
    assert list(read_documents(folder)) == ["a", "b"]  # the train split
    dataset({"text": ["only"]}, "o").save_to_disk(str(tmp_path / "one"))
    assert list(read_documents(tmp_path / "one")) == ["only"]
    with pytest.raises(MechscopeError, match=r"no 'body' column \(has: text, n\)"):
        list(read_documents(folder, text_field="body"))


def test_stdlib_corpus(tmp_path):
    from mechscope.data import PYCODE_HELDOUT_FRACTION
    from mechscope.zoo.pycode import PycodeRecipe

    assert PYCODE_HELDOUT_FRACTION == PycodeRecipe().heldout_fraction
    held, train = stdlib_documents(3), stdlib_documents(3, split="train")
    assert len(held) == 3 and len(train) == 3 and not set(held) & set(train)
    path = write_stdlib_corpus(tmp_path / "stdlib.jsonl", 3)
    assert list(read_documents(path)) == held
    with pytest.raises(MechscopeError, match="split"):
        stdlib_documents(1, split="test")
