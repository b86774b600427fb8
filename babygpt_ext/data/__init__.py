"""Text sources, a verified downloader, train/val split, batching and on-disk token files.

    >>> from babygpt_ext.data import load_text, split, get_batch
    >>> text = load_text()                    # embedded corpus (CPython's pydoc topics)
    >>> train, val = split(torch.tensor(tok.encode(text)), 0.1)
    >>> x, y = get_batch(train, 8, 64, generator=torch.Generator().manual_seed(0))
"""

from .batching import get_batch, split
from .corpus import CORPORA, EMBEDDED, Corpus, embedded_text, load_text
from .download import DownloadError, download, get_cache_dir, sha256_file
from .tokens_file import dtype_for_vocab, open_tokens, read_meta, tokenize_to_file, write_tokens

__all__ = ["load_text", "embedded_text", "CORPORA", "Corpus", "EMBEDDED",
           "download", "DownloadError", "get_cache_dir", "sha256_file",
           "split", "get_batch",
           "write_tokens", "open_tokens", "read_meta", "tokenize_to_file", "dtype_for_vocab"]
