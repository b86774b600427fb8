"""The downloader against a local http.server on 127.0.0.1 (random port, own thread)."""

import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from babygpt_ext.data import CORPORA, DownloadError, download, load_text
from babygpt_ext.data.download import remove_stale_parts

PAYLOAD = bytes(range(256)) * 300 + "héllo wörld\n".encode()  # 76,813 bytes, > one read chunk
SHA = hashlib.sha256(PAYLOAD).hexdigest()
TEXT = "To be, or not to be 🎭\n" * 100
TEXT_SHA = hashlib.sha256(TEXT.encode()).hexdigest()
ROOT = Path(__file__).resolve().parents[1]


class _Handler(BaseHTTPRequestHandler):
    hits: dict  # path -> count, set per server below

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _trickle(self, total: int, block: int, pause: float, max_seconds: float = 20.0):
        """Send `total` bytes in `block`-sized pieces `pause` s apart; stop when the client leaves
        or after max_seconds (every test server loop here is bounded in count and time)."""
        give_up = time.monotonic() + max_seconds
        sent = 0
        try:
            while sent < total and time.monotonic() < give_up:
                at = sent % len(PAYLOAD)  # the body is PAYLOAD repeated
                piece = PAYLOAD[at:at + min(block, total - sent)]
                self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def do_GET(self):
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/missing.txt":
            self.send_error(404, "nope")
            return
        if self.path in ("/nolength.txt", "/nolength-drop.txt"):  # HTTP/1.0 style: the body ends at close
            body = PAYLOAD if self.path == "/nolength.txt" else PAYLOAD[: len(PAYLOAD) // 2]
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        if self.path == "/slow.txt":  # 1 KB every 50 ms of a promised PAYLOAD
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self._trickle(len(PAYLOAD), 1024, 0.05)
            return
        if self.path == "/huge-announced.txt":  # claims 10 GB
            self.send_response(200)
            self.send_header("Content-Length", str(10 << 30))
            self.end_headers()
            self._trickle(1 << 20, 1 << 16, 0.0)
            return
        if self.path == "/endless.txt":  # no length, keeps streaming (bounded: 64 MiB or 20 s)
            self.send_response(200)
            self.end_headers()
            self._trickle(64 << 20, 1 << 16, 0.0)
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


# ---- left-overs, limits, names --------------------------------------------------------------
def test_kill_9_mid_download_leaves_a_part_file_that_the_next_call_removes(server, tmp_path):
    base, _ = server
    code = ("import sys; from babygpt_ext.data import download; "
            "download(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, f"{base}/slow.txt", SHA, str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in tmp_path.glob(".*.part") if p.stat().st_size > 0]:
            assert proc.poll() is None and time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    parts = list(tmp_path.glob(".*.part"))
    assert len(parts) == 1  # what kill -9 leaves behind
    path = download(f"{base}/data.txt", SHA, tmp_path, progress=False)  # any later call cleans up
    assert _files(tmp_path) == [path.name]


def test_a_part_file_of_a_download_in_progress_is_left_alone(tmp_path):
    live, dead = tmp_path / ".x.live.part", tmp_path / ".x.dead.part"
    live.write_bytes(b"half")
    dead.write_bytes(b"half")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a running download holds on its own part file
        assert remove_stale_parts(tmp_path) == [dead]
    assert _files(tmp_path) == [live.name]


def test_part_names_are_unique_per_download(server, tmp_path):
    base, _ = server
    seen = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.update(p.name for p in tmp_path.glob(".*.part"))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        threads = [threading.Thread(target=download, args=(f"{base}/slow.txt", SHA, tmp_path),
                                    kwargs={"progress": False}) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        done.set()
        watcher.join()
    assert len(seen) == 3  # three concurrent downloads of one file, three part files
    assert _files(tmp_path) == [f"{SHA[:16]}-slow.txt"]


def test_unverified_download_without_length_is_never_served_from_the_cache(server, tmp_path, capsys):
    base, hits = server
    for url in (f"{base}/nolength.txt", f"{base}/nolength-drop.txt"):
        first = download(url, None, tmp_path, verify=False, progress=False)
        second = download(url, None, tmp_path, verify=False, progress=False)
        assert first == second and first.name.startswith("unchecked-")
        assert "may be truncated" in capsys.readouterr().err
    assert hits["/nolength.txt"] == 2 and hits["/nolength-drop.txt"] == 2  # fetched again each time
    assert (tmp_path / first.name).read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]  # what arrived, no more


def test_unverified_download_with_matching_length_is_cached(server, tmp_path):
    base, hits = server
    first = download(f"{base}/data.txt", None, tmp_path, verify=False, progress=False)
    assert download(f"{base}/data.txt", None, tmp_path, verify=False, progress=False) == first
    assert hits["/data.txt"] == 1 and not first.name.startswith("unchecked-")
    with pytest.raises(DownloadError, match="incomplete"):
        download(f"{base}/drop.txt", None, tmp_path, verify=False, progress=False)
    assert _files(tmp_path) == [first.name]


def test_overall_deadline_stops_a_trickling_server(server, tmp_path):
    base, _ = server
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="deadline of 0.5 s"):
        download(f"{base}/slow.txt", SHA, tmp_path, progress=False, timeout=5, deadline=0.5)
    assert time.monotonic() - t0 < 5  # each read returns within 50 ms, so the deadline is what stops it
    assert _files(tmp_path) == []


def test_size_cap_refuses_an_announced_or_an_endless_body(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match="announces 10,737,418,240 bytes"):
        download(f"{base}/huge-announced.txt", SHA, tmp_path, progress=False)  # default cap: 1 GiB
    with pytest.raises(DownloadError, match="more than max_bytes=100,000"):
        download(f"{base}/endless.txt", None, tmp_path, verify=False, progress=False, max_bytes=100_000)
    assert _files(tmp_path) == []


def test_names_and_limits_are_validated_before_any_request(server, tmp_path):
    base, hits = server
    with pytest.raises(ValueError, match="300 characters"):
        download(f"{base}/{'a' * 296}.txt", SHA, tmp_path, progress=False)
    for bad, match in ((dict(timeout=0), "timeout"), (dict(deadline=-1), "deadline"),
                       (dict(max_bytes=0), "max_bytes"), (dict(deadline=float("nan")), "deadline")):
        with pytest.raises(ValueError, match=match):
            download(f"{base}/data.txt", SHA, tmp_path, progress=False, **bad)
    with pytest.raises(ValueError, match="http"):
        download("file:///etc/passwd", SHA, tmp_path, progress=False)
    assert hits == {} and _files(tmp_path) == []
    odd = download(f"{base}/a%20b%3F.txt", SHA, tmp_path, progress=False)  # a legal but awkward name
    assert odd.name == f"{SHA[:16]}-a_20b_3F.txt"
