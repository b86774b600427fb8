"""The downloader against a local http.server on 127.0.0.1 (random port, own thread)."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from babygpt_ext.data import CORPORA, DownloadError, download, load_text

PAYLOAD = bytes(range(256)) * 300 + "héllo wörld\n".encode()  # 76,813 bytes, > one read chunk
SHA = hashlib.sha256(PAYLOAD).hexdigest()
TEXT = "To be, or not to be 🎭\n" * 100
TEXT_SHA = hashlib.sha256(TEXT.encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hits: dict  # path -> count, set per server below

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/missing.txt":
            self.send_error(404, "nope")
            return
        body = TEXT.encode() if self.path == "/corpus.txt" else PAYLOAD
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/drop.txt":
            # promise N bytes, send N/2, then hang up
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    hits: dict = {}
    handler = type("Handler", (_Handler,), {"hits": hits})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_success_and_cache_hit(server, tmp_path):
    base, hits = server
    path = download(f"{base}/data.txt", SHA, tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert path.parent == tmp_path and path.name.endswith("data.txt")
    again = download(f"{base}/data.txt", SHA, tmp_path, progress=False)
    assert again == path
    assert hits == {"/data.txt": 1}  # second call served from the cache
    assert _files(tmp_path) == [path.name]  # no temp files left behind


def test_env_var_sets_cache_dir(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setenv("BABYGPT_CACHE", str(tmp_path / "cache"))
    path = download(f"{base}/data.txt", SHA, progress=False)
    assert path.parent == tmp_path / "cache"


def test_corrupted_cache_entry_is_refetched(server, tmp_path):
    base, hits = server
    path = download(f"{base}/data.txt", SHA, tmp_path, progress=False)
    path.write_bytes(b"tampered")
    assert download(f"{base}/data.txt", SHA, tmp_path, progress=False).read_bytes() == PAYLOAD
    assert hits["/data.txt"] == 2


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    base, _ = server
    wrong = "0" * 64
    with pytest.raises(DownloadError) as e:
        download(f"{base}/data.txt", wrong, tmp_path, progress=False)
    msg = str(e.value)
    assert "checksum mismatch" in msg and wrong in msg and SHA in msg and "/data.txt" in msg
    assert _files(tmp_path) == []


def test_dropped_connection_leaves_nothing(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError) as e:
        download(f"{base}/drop.txt", SHA, tmp_path, progress=False)
    msg = str(e.value)
    assert "/drop.txt" in msg and str(len(PAYLOAD)) in msg and str(len(PAYLOAD) // 2) in msg
    assert _files(tmp_path) == []


def test_http_error_leaves_nothing(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match="404"):
        download(f"{base}/missing.txt", SHA, tmp_path, progress=False)
    assert _files(tmp_path) == []


def test_checksum_required_unless_no_verify(server, tmp_path, capsys):
    base, _ = server
    with pytest.raises(ValueError, match="no sha256"):
        download(f"{base}/data.txt", None, tmp_path, progress=False)
    path = download(f"{base}/data.txt", None, tmp_path, verify=False, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert SHA in capsys.readouterr().err  # the hash is printed so the user can pin it
    with pytest.raises(ValueError, match="64 hex"):
        download(f"{base}/data.txt", "abc", tmp_path, progress=False)


def test_registered_corpus_downloads_through_the_cache(server, tmp_path, monkeypatch):
    from babygpt_ext.data import corpus as corpus_mod

    base, hits = server
    monkeypatch.setitem(corpus_mod.CORPORA, "fake", corpus_mod.Corpus(f"{base}/corpus.txt", TEXT_SHA, None, "test"))
    assert load_text("fake", cache_dir=tmp_path) == TEXT
    assert load_text("fake", cache_dir=tmp_path) == TEXT
    assert hits == {"/corpus.txt": 1}


def test_registry_entries_carry_checksums():
    for name, entry in CORPORA.items():
        assert entry.url.startswith("https://"), name
        assert entry.sha256 is not None and len(entry.sha256) == 64, name


def test_registry_entry_without_checksum_needs_no_verify(server, tmp_path, monkeypatch, capsys):
    from babygpt_ext.data import corpus as corpus_mod

    base, _ = server
    monkeypatch.setitem(corpus_mod.CORPORA, "unpinned", corpus_mod.Corpus(f"{base}/corpus.txt", None, None, "test"))
    with pytest.raises(ValueError, match="--no-verify"):
        load_text("unpinned", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert load_text("unpinned", cache_dir=tmp_path, verify=False) == TEXT
    assert TEXT_SHA in capsys.readouterr().err
