"""Corpus loading, split, batching and on-disk token files, all on small data."""

import functools
import json

import numpy as np
import pytest
import torch

from babygpt_ext.data import (embedded_text, get_batch, load_text, open_tokens, read_meta, split,
                              tokenize_to_file, write_tokens)
from babygpt_ext.tokenizers import BPETokenizer, CharTokenizer


@functools.lru_cache(maxsize=None)
def small_bpe() -> BPETokenizer:
    return BPETokenizer.train(embedded_text()[:100_000], vocab_size=500)


# ---- load_text ----------------------------------------------------------------------------
def test_load_text_embedded_file_and_folder(tmp_path):
    assert load_text() == load_text("pydoc") == embedded_text()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_text("second ✓\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first\n", encoding="utf-8")
    (tmp_path / "skip.py").write_text("ignored", encoding="utf-8")
    assert load_text(tmp_path / "a.txt") == "first\n"
    assert load_text(str(tmp_path)) == "first\nsecond ✓\n"  # sorted paths: a.txt < b/two.md


def test_load_text_errors(tmp_path):
    with pytest.raises(ValueError, match="no .txt/.md files"):
        load_text(tmp_path)
    with pytest.raises(ValueError, match="not an existing file.*known corpora.*tinyshakespeare"):
        load_text("no-such-corpus")


# ---- split / get_batch --------------------------------------------------------------------
def test_split_is_contiguous_tail():
    ids = list(range(100))
    train, val = split(ids, 0.1)
    assert train == list(range(90)) and val == list(range(90, 100))
    t_train, t_val = split(torch.arange(10), 0.2)
    assert t_val.tolist() == [8, 9]
    assert split(ids, 0.0) == (ids, [])
    with pytest.raises(ValueError, match="val_fraction"):
        split(ids, 1.0)
    with pytest.raises(ValueError, match="too few"):
        split([1, 2], 0.1)


@pytest.mark.parametrize("kind", ["tensor", "numpy", "memmap"])
def test_get_batch_shapes_shift_and_reproducibility(kind, tmp_path):
    data = torch.arange(1000) * 7 % 991  # distinct values: each window is identifiable
    if kind == "numpy":
        data = data.numpy().astype(np.uint16)
    elif kind == "memmap":
        write_tokens(tmp_path / "t.bin", data, vocab_size=991)
        data = open_tokens(tmp_path / "t.bin")
    x, y = get_batch(data, 5, 8, generator=torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (5, 8) and x.dtype == y.dtype == torch.int64
    flat = torch.as_tensor(np.asarray(data, dtype=np.int64))
    for row_x, row_y in zip(x, y):
        start = int(torch.nonzero(flat == row_x[0])[0])
        assert torch.equal(row_x, flat[start:start + 8])
        assert torch.equal(row_y, flat[start + 1:start + 9])  # y is x shifted by one
    x2, y2 = get_batch(data, 5, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = get_batch(data, 5, 8, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(x, x3)


def test_get_batch_reaches_the_last_token_and_checks_input():
    data = torch.arange(6)
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        _, y = get_batch(data, 4, 5, generator=g)
        seen.update(y.flatten().tolist())
    assert 5 in seen and 0 not in seen  # the only window: x = 0..4, y = 1..5
    with pytest.raises(ValueError, match="block_size=6"):
        get_batch(data, 1, 6)
    with pytest.raises(ValueError, match="1-D"):
        get_batch(torch.zeros(3, 3), 1, 1)


# ---- token files --------------------------------------------------------------------------
@pytest.mark.parametrize("vocab,dtype", [(1000, "uint16"), (65_536, "uint16"), (65_537, "uint32")])
def test_write_open_tokens_dtype_and_sidecar(vocab, dtype, tmp_path):
    ids = [0, 1, vocab - 1, 5]
    n = write_tokens(tmp_path / "a.bin", ids, vocab_size=vocab)
    assert n == 4
    meta = read_meta(tmp_path / "a.bin")
    assert meta["dtype"] == dtype and meta["count"] == 4 and meta["vocab_size"] == vocab
    mm = open_tokens(tmp_path / "a.bin")
    assert isinstance(mm, np.memmap) and mm.dtype == np.dtype(dtype) and mm.tolist() == ids
    assert (tmp_path / "a.bin").stat().st_size == 4 * np.dtype(dtype).itemsize


def test_write_tokens_from_a_generator_of_ints_and_chunks(tmp_path):
    def gen():
        yield 1
        yield 2
        yield [3, 4]
        yield torch.tensor([5])
        yield np.array([6, 7])
        yield 8
    assert write_tokens(tmp_path / "g.bin", gen(), vocab_size=10) == 8
    assert open_tokens(tmp_path / "g.bin").tolist() == [1, 2, 3, 4, 5, 6, 7, 8]


def test_write_tokens_rejects_out_of_range_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match=r"id 10 .*vocab_size=10"):
        write_tokens(tmp_path / "bad.bin", [1, 10], vocab_size=10)
    with pytest.raises(ValueError, match="id -1"):
        write_tokens(tmp_path / "bad.bin", [-1], vocab_size=10)
    assert list(tmp_path.iterdir()) == []


def test_open_tokens_detects_truncation(tmp_path):
    write_tokens(tmp_path / "t.bin", list(range(10)), vocab_size=10)
    with open(tmp_path / "t.bin", "r+b") as f:
        f.truncate(6)
    with pytest.raises(ValueError, match="6 bytes on disk"):
        open_tokens(tmp_path / "t.bin")
    (tmp_path / "t.bin.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="sidecar"):
        open_tokens(tmp_path / "t.bin")


@pytest.mark.parametrize("source_kind", ["path", "str", "iterable"])
def test_tokenize_to_file_equals_whole_text_encode(source_kind, tmp_path):
    tok = small_bpe()
    text = embedded_text()[200_000:260_000] + "\n☃ snow, 雪\n"  # multi-byte chars cross read blocks
    if source_kind == "path":
        (tmp_path / "in.txt").write_text(text, encoding="utf-8")
        source = tmp_path / "in.txt"
    elif source_kind == "str":
        source = text
    else:
        source = (text[i:i + 777] for i in range(0, len(text), 777))
    n = tokenize_to_file(source, tok, tmp_path / "out.bin", chunk_chars=1001, progress=False)
    expected = tok.encode(text)
    assert n == len(expected)
    assert open_tokens(tmp_path / "out.bin").tolist() == expected
    assert read_meta(tmp_path / "out.bin")["vocab_size"] == tok.vocab_size


def test_tokenize_to_file_char_tokenizer(tmp_path):
    text = "ab\nba\n" * 50
    tok = CharTokenizer.from_text(text)
    tokenize_to_file(text, tok, tmp_path / "c.bin", chunk_chars=7, progress=False)
    assert tok.decode(open_tokens(tmp_path / "c.bin").tolist()) == text
