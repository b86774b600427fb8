"""Tokenizers: round trips (hypothesis for BPE), save/load dispatch, errors, compression."""

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from babygpt_ext.data import embedded_text
from babygpt_ext.tokenizers import (BPETokenizer, CharTokenizer, Tokenizer, WordTokenizer,
                                    get_tokenizer, safe_chunks, split_words)
from babygpt_ext.tokenizers.base import last_safe_cut


@functools.lru_cache(maxsize=None)
def corpus() -> str:
    return embedded_text()


@functools.lru_cache(maxsize=None)
def bpe1000() -> BPETokenizer:
    return BPETokenizer.train(corpus(), vocab_size=1000)


def test_embedded_corpus_is_the_pydoc_topics():
    from pydoc_data.topics import topics

    text = corpus()
    assert 300_000 < len(text) < 1_000_000
    first = sorted(topics)[0]
    assert text.startswith(topics[first])


# ---- char ---------------------------------------------------------------------------------
def test_char_round_trip_and_unknown_error():
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab_size == len(set("hello world"))
    assert tok.decode(tok.encode("low door")) == "low door"
    with pytest.raises(ValueError, match=r"not in the vocabulary.*'z'.*index 2"):
        tok.encode("hez")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    assert CharTokenizer.from_text("ab", extra_chars="z").encode("z") == [2]


# ---- word ---------------------------------------------------------------------------------
def test_word_pieces_and_lossless_round_trip():
    s = "Hello,  world!\n\tIt's 3.14 -- ok?\r\n"
    assert "".join(split_words(s)) == s
    assert split_words("a, b") == ["a", ",", " ", "b"]
    tok = WordTokenizer.from_text(corpus())
    text = corpus()[:20_000]
    assert tok.decode(tok.encode(text)) == text


def test_word_unknown_and_vocab_cap():
    tok = WordTokenizer.from_text("the cat the dog the end", max_vocab=3)
    assert tok.itos == ["<unk>", " ", "the"]  # by frequency: " " x5, "the" x3
    ids = tok.encode("the cat")
    assert ids == [2, 1, 0]
    assert tok.decode(ids) == "the <unk>"
    # a literal "<unk>" in the text is three ordinary pieces, never the unk id
    assert len(WordTokenizer.from_text("<unk>").encode("<unk>")) == 3


# ---- bpe ----------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_bpe_round_trips_arbitrary_unicode(s):
    tok = bpe1000()
    assert tok.decode(tok.encode(s)) == s


@pytest.mark.parametrize("s", ["", " leading", "  two", "trailing  ", "\r\n\r\n", "e\u0301\u0302",
                               "👩‍👩‍👧 🇫🇷 日本語の文章", "\x00\x01\x1b[0m\x7f", "\ufeffbom", "tab\tand\u00a0nbsp",
                               "ǅ Ⅻ ﬁ", "\U0010ffff"])
def test_bpe_round_trips_edge_cases(s):
    tok = bpe1000()
    assert tok.decode(tok.encode(s)) == s


def test_bpe_rejects_lone_surrogates():
    with pytest.raises(ValueError, match="not valid Unicode"):
        bpe1000().encode("a\ud800b")


def test_bpe_whole_corpus_vocab_and_compression():
    tok = bpe1000()
    assert tok.vocab_size == 1000
    ids = tok.encode(corpus())
    assert tok.decode(ids) == corpus()
    ratio = len(ids) / len(corpus())
    # measured 0.345 tokens/char (a BPE trained on random windows, the seed's way, reaches 0.60)
    assert ratio < 0.40, ratio


def test_bpe_parallel_chunked_encode_equals_whole_text_encode():
    tok = bpe1000()
    text = corpus()
    whole = tok.hf.encode(text, add_special_tokens=False).ids  # one call, no chunking
    assert tok.encode(text) == whole
    chunked = [i for piece in tok.encode_batch(list(safe_chunks(text, 3000))) for i in piece]
    assert chunked == whole


def test_bpe_rejects_too_small_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("abc", vocab_size=100)


# ---- chunking -----------------------------------------------------------------------------
# Mostly characters where tokenizers decide boundaries (letters, digits, apostrophes,
# punctuation, every kind of whitespace incl. ones Python and Rust disagree on), some of anything.
_TRICKY = st.lists(st.one_of(st.sampled_from(list("ab Zs9'.!-_ ")),
                             st.sampled_from(list("\t\n\r\x0b\x0c\x1c\x85\u00a0\u2028\u3000é😀")),
                             st.characters(codec="utf-8")),
                   max_size=80).map("".join)


@settings(max_examples=300, deadline=None)
@given(_TRICKY, st.integers(1, 6))
def test_safe_chunks_never_change_the_ids(text, size):
    pieces = list(safe_chunks(text, size))
    assert "".join(pieces) == text
    for tok in (bpe1000(), word_tok()):
        chunked = [i for piece in pieces for i in tok.encode(piece)]
        assert chunked == tok.encode(text), (tok.kind, pieces)
    cut = last_safe_cut(text)
    if cut:
        assert text[cut] in " \t\n\r\f\v" and not text[cut - 1].isspace()
        for tok in (bpe1000(), word_tok()):
            assert tok.encode(text[:cut]) + tok.encode(text[cut:]) == tok.encode(text)


@functools.lru_cache(maxsize=None)
def word_tok() -> WordTokenizer:
    return WordTokenizer.from_text(corpus())


# ---- the shared interface -----------------------------------------------------------------
@pytest.mark.parametrize("kind,vocab", [("char", 0), ("word", 100_000), ("bpe", 400)])
def test_save_load_dispatches_on_kind(kind, vocab, tmp_path):
    text = corpus()[:50_000]
    tok = get_tokenizer(kind, text, vocab_size=vocab)
    path = tok.save(tmp_path / f"{kind}.json")
    back = Tokenizer.load(path)
    assert type(back) is type(tok) and back.kind == kind
    assert back.vocab_size == tok.vocab_size
    sample = text[1000:3000]
    assert back.encode(sample) == tok.encode(sample)
    assert back.decode(back.encode(sample)) == sample


def test_load_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "sentencepiece", "format": 1}')
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        Tokenizer.load(bad)
    path = CharTokenizer.from_text("ab").save(tmp_path / "c.json")
    with pytest.raises(ValueError, match="not a WordTokenizer"):
        WordTokenizer.load(path)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        get_tokenizer("sentencepiece", "abc")


def test_bpe_token_bytes_concatenate_to_the_utf8_text():
    tok = bpe1000()
    s = corpus()[:5000] + "naïve 🚀\r\n"
    ids = tok.encode(s)
    assert b"".join(tok.token_bytes(i) for i in ids) == s.encode("utf-8")
    assert tok.token_strings(tok.encode("é")) == ["\\xc3", "\\xa9"]  # unmerged: two byte tokens


# ---- the `babygpt tokenize` subcommand ----------------------------------------------------
def _run_cli(argv):
    import argparse

    from babygpt_ext.cli import tokenize as tokenize_cmd

    parser = argparse.ArgumentParser(prog="babygpt")
    tokenize_cmd.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_tokenize_cli_trains_reports_saves_and_writes_ids(tmp_path, capsys):
    from babygpt_ext.data import open_tokens

    data = tmp_path / "corpus.txt"
    data.write_text(corpus()[:40_000], encoding="utf-8")
    rc = _run_cli(["tokenize", "--kind", "bpe", "--vocab-size", "300", "--data", str(data),
                   "--save", str(tmp_path / "tok.json"), "--out", str(tmp_path / "ids.bin")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "vocab 300" in out and "tokens/char" in out and "M chars/s" in out and "== corpus: True" in out
    tok = Tokenizer.load(tmp_path / "tok.json")
    assert open_tokens(tmp_path / "ids.bin").tolist() == tok.encode(corpus()[:40_000])
    assert _run_cli(["tokenize", "--kind", "char", "--data", str(data), "--show", "snow ☃"]) == 0
    assert "cannot encode 'snow ☃'" in capsys.readouterr().out  # ☃ is not in the data


# ---- damaged and foreign files, bad ids ---------------------------------------------------
def _damaged_files(tmp_path):
    """(name, bytes) of files that are not, or no longer, a valid tokenizer."""
    good = CharTokenizer.from_text("abc").save(tmp_path / "good.json").read_bytes()
    return [
        ("empty", b""), ("truncated", good[: len(good) // 2]), ("latin-1", b'{"kind": "char", "chars": ["\xe9"]}'),
        ("a list", b"[1, 2]"), ("hf-style", b'{"model": {"type": "BPE"}}'), ("kind is a list", b'{"kind": [], "format": 1}'),
        ("no chars", b'{"kind": "char", "format": 1}'), ("chars not a list", b'{"kind": "char", "format": 1, "chars": 5}'),
        ("duplicate chars", b'{"kind": "char", "format": 1, "chars": ["a", "a"]}'),
        ("word not a string", b'{"kind": "word", "format": 1, "words": ["the", 7]}'),
        ("bpe not hf", b'{"kind": "bpe", "format": 1, "hf_tokenizer": {"x": 1}}'),
        ("newer format", good.replace(b'"format": 1', b'"format": 2')),
    ]


def test_damaged_or_foreign_files_raise_value_error_naming_the_file(tmp_path):
    for name, data in _damaged_files(tmp_path):
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_bytes(data)
        with pytest.raises(ValueError) as e:
            Tokenizer.load(path)
        assert str(path) in str(e.value), name


def test_bpe_file_missing_byte_tokens_is_refused(tmp_path):
    import json

    path = BPETokenizer.train(corpus()[:20_000], vocab_size=300).save(tmp_path / "bpe.json")
    state = json.loads(path.read_text(encoding="utf-8"))
    vocab = state["hf_tokenizer"]["model"]["vocab"]
    del vocab["ā"]  # byte 0x01 (in no merge): without it, that byte would encode to nothing
    path.write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(ValueError, match="byte tokens are missing"):
        Tokenizer.load(path)


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_randomly_mutated_files_load_or_raise_value_error(kind, tmp_path):
    """60 random byte edits of a saved tokenizer: each one loads and works, or raises ValueError."""
    import random

    text = corpus()[:20_000]
    good = get_tokenizer(kind, text, vocab_size=300).save(tmp_path / "good.json").read_bytes()
    rng = random.Random(kind)
    path = tmp_path / "mutated.json"
    for _ in range(60):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            op, at = rng.random(), rng.randrange(len(data))
            if op < 0.4:
                data[at] = rng.randrange(256)
            elif op < 0.7:
                del data[at:at + rng.randint(1, 20)]
            else:
                data[at:at] = rng.choice([b'"', b",", b"}", b"]", b"null", b"1e999", b"\xff", b"-1"])
        path.write_bytes(bytes(data))
        try:
            tok = Tokenizer.load(path)
        except ValueError:
            continue
        try:
            tok.decode(tok.encode(text[:500]))
        except ValueError:  # e.g. a character the damaged vocabulary lost
            pass


def test_decode_refuses_floats_and_bools_and_accepts_integer_scalars():
    import numpy as np
    import torch

    tok = CharTokenizer.from_text("abc")
    assert tok.decode([0, np.int64(1), torch.tensor(2)]) == "abc"
    assert tok.decode(torch.tensor([2, 1, 0])) == "cba"
    for kind_tok in (tok, WordTokenizer.from_text("a b"), bpe1000()):
        for bad in ([1.0], [True], [np.float32(1)], [np.bool_(False)], [torch.tensor(1.0)], ["a"]):
            with pytest.raises(TypeError, match="integers"):
                kind_tok.decode(bad)


@pytest.mark.parametrize("tok", [CharTokenizer.from_text("abc"), WordTokenizer.from_text("a b")], ids=["char", "word"])
def test_encode_refuses_non_strings(tok):
    with pytest.raises(TypeError, match="expects str"):
        tok.encode(["a", "b"])
