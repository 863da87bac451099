"""`usvlm refine` against hostile servers, files and options (issue 13, items 3, 4, 7, 10, 11).

Real HTTP servers on 127.0.0.1 (a redirecting one, one collecting credentials on another port, a
trickling one, one announcing 3 GB), real model folders holding pickles and code, real files, and
the real command in a subprocess where the exit code, stderr and a closed pipe matter.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from models import save_tiny_lm

from usvlm.cli import main
from usvlm.errors import InputError
from usvlm.text.refiner import (HFBackend, HTTPBackend, Refiner, RefinerCache, RefinerError,
                                RefinerFallbackWarning, parse_descriptions)

REPLY = ["an irregular hypoechoic breast mass", "a breast lesion with spiculated margins"]
KEY = "sk-hostile-9f8e7d6c5b4a"
PASSWORD = "pw-h0stile-51"
USVLM = [sys.executable, "-m", "usvlm"]


def _completion(content: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                            "content": content}}]}).encode()


# -- Real servers ----------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                 "body": body})
        try:
            self.server.behave(self)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the client hung up, as it should

    do_GET = do_POST

    def reply(self, status: int = 200, payload: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


def _good(handler: _Handler) -> None:
    handler.reply(payload=_completion(json.dumps(REPLY)), Content_Type="application/json")


class _QuietServer(ThreadingHTTPServer):
    """A test server whose handler errors (the client hung up early, as a refused batch does) are
    kept in `errors` instead of printed: printed, they land in the stderr the tests read."""

    def handle_error(self, request, client_address):  # noqa: ANN001
        self.errors.append(sys.exc_info()[1])


@pytest.fixture
def servers():
    """start(behave) -> a running server on 127.0.0.1 (its `url`, `port`, `seen` requests)."""
    started = []

    def start(behave=_good):
        httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads, httpd.errors = True, []
        httpd.behave, httpd.seen = behave, []
        httpd.port = httpd.server_address[1]
        httpd.url = f"http://127.0.0.1:{httpd.port}/v1"
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        started.append(httpd)
        return httpd

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def _backend(url: str, **options) -> HTTPBackend:
    options.setdefault("timeout", 5.0)
    options.setdefault("retries", 0)
    return HTTPBackend(url, model="tiny", backoff=0.01, **options)


def _ask(backend: HTTPBackend) -> list[str]:
    return Refiner(backend, fallback=False).refine("cyst", "breast")


# -- Item 3: credentials stay with the host the user named ------------------------------------------

@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("where", ["other port", "other host name"])
def test_redirect_to_another_origin_is_not_followed(servers, status, where):
    collector = servers()
    redirector = servers(lambda h: h.reply(status, Location=target))
    target = f"http://127.0.0.1:{collector.port}/steal" if where == "other port" else \
        f"http://localhost:{redirector.port}/steal"
    with pytest.raises(RefinerError, match=rf"HTTP {status} redirect") as caught:
        _ask(_backend(redirector.url, api_key=KEY))
    assert collector.seen == []  # nothing, not even without the key, went to the other host
    assert [r["path"] for r in redirector.seen] == ["/v1/chat/completions"]  # localhost: no visit
    assert KEY not in str(caught.value)


def test_same_origin_307_is_followed_with_the_key(servers):
    def behave(h: _Handler) -> None:
        if h.path == "/v1/chat/completions":
            h.reply(307, Location="/v2/chat/completions")
        else:
            _good(h)
    server = servers(behave)
    assert _ask(_backend(server.url, api_key=KEY)) == REPLY
    assert [(r["path"], r["auth"]) for r in server.seen] == \
        [("/v1/chat/completions", f"Bearer {KEY}"), ("/v2/chat/completions", f"Bearer {KEY}")]
    assert json.loads(server.seen[1]["body"])["model"] == "tiny"  # the POST body went along


def test_redirect_loop_and_post_to_get_redirect_are_refused(servers):
    loop = servers(lambda h: h.reply(307, Location=h.path))
    with pytest.raises(RefinerError, match="more than 3 redirects"):
        _ask(_backend(loop.url))
    assert len(loop.seen) == 4
    same_host_302 = servers(lambda h: h.reply(302, Location="/v2/chat/completions"))
    with pytest.raises(RefinerError, match="POST into a GET"):
        _ask(_backend(same_host_302.url))


def test_url_password_becomes_basic_auth_and_is_never_shown(servers):
    import base64

    echo = servers(lambda h: h.reply(200, f"<html>{h.headers['Authorization']} {PASSWORD} "
                                          f"{KEY}</html>".encode()))
    url = f"http://alice:{PASSWORD}@127.0.0.1:{echo.port}/v1?api_key={PASSWORD}x"
    backend = _backend(url)
    with pytest.warns(RefinerFallbackWarning) as record:
        Refiner(backend).refine("cyst", "breast")
    sent = echo.seen[0]["auth"]
    assert base64.b64decode(sent.split()[1]).decode() == f"alice:{PASSWORD}"
    assert echo.seen[0]["path"] == f"/v1/chat/completions?api_key={PASSWORD}x"
    message = str(record[0].message)
    assert "not JSON" in message and PASSWORD not in message and "alice" not in message
    assert "api_key=***" in message and backend.endpoint.startswith("http://127.0.0.1:")
    keyed = _backend(echo.url, api_key=KEY)  # a server echoing the key back
    with pytest.raises(RefinerError) as caught:
        _ask(keyed)
    assert KEY not in str(caught.value)


def test_bad_url_and_api_key_are_refused_without_echoing_secrets():
    for url in (f"http://bob:{PASSWORD}@127.0.0.1:99999/v1", f"ftp://bob:{PASSWORD}@host/v1",
                f"http://bob:{PASSWORD}@/v1", f"http://bob:{PASSWORD}@host/v 1"):
        with pytest.raises(InputError) as caught:
            HTTPBackend(url)
        assert PASSWORD not in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(InputError, match="HTTP header") as caught:
        HTTPBackend("http://127.0.0.1:9/v1", api_key=KEY + "\r\nX-Injected: 1")
    assert KEY not in str(caught.value)


def test_cli_masks_the_url_password_everywhere(servers, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    source = tmp_path / "captions.jsonl"
    source.write_text('{"id": "a", "text": "cyst", "organ": "breast"}\n')
    out = tmp_path / "out.jsonl"
    url = f"http://carol:{PASSWORD}@127.0.0.1:{dead}/v1?token={PASSWORD}"
    run = subprocess.run(USVLM + ["refine", "--backend", "http", "--url", url, "--retries", "0",
                                  "--timeout", "2", "--cache", str(tmp_path / "cache.jsonl"),
                                  "--input", str(source), "-o", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    record = json.loads(out.read_text())
    assert "no answer" in record["fallback"]
    everything = run.stdout + run.stderr + out.read_text()
    assert PASSWORD not in everything and "carol" not in everything
    assert not (tmp_path / "cache.jsonl").exists()  # fallbacks are not cached
    bad = subprocess.run(USVLM + ["refine", "cyst", "--backend", "http", "--url",
                                  f"http://carol:{PASSWORD}@127.0.0.1:0/v1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert PASSWORD not in bad.stderr and "--url" in bad.stderr.splitlines()[-1]


# -- Item 7: one deadline per request, capped back-off ----------------------------------------------

def _trickle_body(h: _Handler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", "100000")
    h.end_headers()
    for _ in range(600):  # one byte every 0.05 s: each read is fast, the whole never ends
        h.wfile.write(b" ")
        h.wfile.flush()
        time.sleep(0.05)


def _trickle_headers(h: _Handler) -> None:
    for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 600:
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(0.05)


@pytest.mark.parametrize("behave", [_trickle_body, _trickle_headers])
def test_trickling_server_is_cut_off_at_the_deadline(servers, behave):
    server = servers(behave)
    start = time.monotonic()
    with pytest.raises(RefinerError, match=r"timed out after 1 s"):
        _ask(_backend(server.url, timeout=1.0))
    assert time.monotonic() - start < 2.5


def test_retry_backoff_is_capped(servers):
    from usvlm.text.http_backend import MAX_BACKOFF_S

    busy = servers(lambda h: h.reply(503, b"{}"))
    backend = HTTPBackend(busy.url, timeout=2, retries=1, backoff=1e6)  # an absurd back-off
    start = time.monotonic()
    with pytest.raises(RefinerError, match="after 2 attempts"):
        backend.complete([{"role": "user", "content": "x"}])
    assert time.monotonic() - start < MAX_BACKOFF_S + 2 and len(busy.seen) == 2


# -- Item 4: bounded response bodies ------------------------------------------------------------------

def test_huge_content_length_is_refused_before_reading(servers):
    def behave(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(3 * 2**30))
        h.end_headers()
        h.wfile.write(b'{"choices": ')
        h.wfile.flush()
        time.sleep(3)
    server = servers(behave)
    start = time.monotonic()
    with pytest.raises(RefinerError, match=r"announces 3221225472 bytes"):
        _ask(_backend(server.url))
    assert time.monotonic() - start < 2.5  # refused at once, not read or waited for


@pytest.mark.parametrize("framing", ["close", "chunked"])
def test_endless_body_without_length_is_cut_off(servers, framing):
    from usvlm.text.http_backend import MAX_RESPONSE_BYTES

    block = b"[" * 65536
    sent = []

    def behave(h: _Handler) -> None:
        h.send_response(200)
        if framing == "chunked":
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Connection", "close")
        h.end_headers()
        for _ in range(4 * MAX_RESPONSE_BYTES // len(block)):
            h.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if framing == "chunked"
                          else block)
            sent.append(len(block))
        h.close_connection = True
    server = servers(behave)
    with pytest.raises(RefinerError, match=rf"larger than {MAX_RESPONSE_BYTES} bytes"):
        _ask(_backend(server.url))
    time.sleep(0.2)
    assert sum(sent) < 4 * MAX_RESPONSE_BYTES  # the client stopped reading


# -- Item 10: deeply nested JSON, parse-time options, pickles, broken pipes ---------------------------

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("where", ["reply", "response"])
def test_deeply_nested_json_from_the_server_falls_back(servers, where):
    payload = _completion(DEEP) if where == "reply" else DEEP.encode()
    server = servers(lambda h: h.reply(200, payload))
    with pytest.warns(RefinerFallbackWarning, match="nested too deeply"):
        assert Refiner(_backend(server.url)).refine("cyst", "breast")
    for text in (DEEP, "Sure: " + DEEP + " done", '{"a": ' + DEEP + "}"):
        with pytest.raises(RefinerError, match="nested too deeply"):
            parse_descriptions(text)


def test_hostile_cache_files_are_skipped_not_fatal(servers, tmp_path):
    server = servers()
    nested = tmp_path / "nested.jsonl"
    nested.write_text('{"key": ' + DEEP + "}\n" +
                      json.dumps({"key": "k", "outputs": [{"not": "text"}, 3]}) + "\n")
    assert RefinerCache(nested).get("k") is None
    assert Refiner(_backend(server.url), cache=nested).refine("cyst", "breast") == REPLY
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero, tmp_path):
        start = time.monotonic()
        with pytest.warns(UserWarning, match="not a regular file; not used"):
            assert Refiner(_backend(server.url), cache=path).refine("cyst", "breast") == REPLY
        assert time.monotonic() - start < 5


def _captions(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_hostile_input_files_give_one_line_errors(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    nested = _captions(tmp_path / "nested.jsonl", '{"id": "a", "text": ' + DEEP + "}")
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    bad_organ = _captions(tmp_path / "organ.jsonl", '{"id": "a", "text": "cyst", "organ": [1]}')
    bad_id = _captions(tmp_path / "id.jsonl", '{"id": {"x": 1}, "text": "cyst"}')
    empty = _captions(tmp_path / "empty.jsonl")
    cases = [(nested, "nested too deeply"), (fifo, "not a regular file"),
             (zero, "not a regular file"), (tmp_path, "not a regular file"),
             (bad_organ, '"organ" must be a string'), (bad_id, '"id" must be'),
             (empty, "holds no captions"), (tmp_path / "missing.jsonl", "does not exist")]
    for source, problem in cases:
        assert main(["refine", "--input", str(source), "-o", str(out), "--no-cache",
                     "--no-progress"]) == 2, source
        err = capsys.readouterr().err
        assert problem in err and err.count("\n") == 1, err
        assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


@pytest.mark.parametrize("option, value, problem", [
    ("--timeout", "nan", "more than 0"), ("--timeout", "inf", "more than 0"),
    ("--timeout", "-1", "more than 0"), ("--timeout", "0", "more than 0"),
    ("--timeout", "1e9", "at most 3600"), ("--timeout", "soon", "number of seconds"),
    ("--retries", "-1", "0 to 10"), ("--retries", "1000000", "0 to 10"),
    ("--retries", "2.5", "whole number"), ("--count", "0", "1 to 50"),
    ("--count", "51", "1 to 50"), ("--count", "nan", "whole number"),
    ("--url", "ftp://host/v1", "http:// or https://"),
    ("--url", "http://127.0.0.1:99999/v1", "invalid host or port"),
    ("--url", "http://[::1/v1", "invalid host or port"),
    ("--url", "http://host/a b", "spaces or control"),
    ("--url", f"http://u:{PASSWORD}@host:port/v1", "invalid host or port"),
])
def test_options_are_checked_at_parse_time(capsys, option, value, problem):
    with pytest.raises(SystemExit) as caught:
        main(["refine", "cyst", "--backend", "http", "--url", "http://127.0.0.1:9/v1",
              "--no-cache", option, value])
    assert caught.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"usvlm refine: error: argument {option}") and problem in last
    assert PASSWORD not in last


def test_hostile_bank_files_are_refused_at_parse_time(tmp_path, capsys):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    folder = tmp_path / "banks"
    folder.mkdir()
    os.mkfifo(folder / "thyroid.json")
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(64 * 2**20)  # sparse: no disk used
    for bank, problem in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"),
                          (folder, "not a regular file"), (big, "a prompt bank is at most"),
                          (tmp_path / "missing.json", "No such file")):
        start = time.monotonic()
        with pytest.raises(SystemExit) as caught:
            main(["refine", "cyst", "--no-cache", "--bank", str(bank)])
        assert caught.value.code == 2 and time.monotonic() - start < 5
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("usvlm refine: error: argument --bank") and problem in last


def test_environment_timeout_and_misplaced_options_are_one_line_errors(monkeypatch, capsys,
                                                                        tmp_path):
    for value in ("nan", "inf", "-3", "abc"):
        monkeypatch.setenv("USVLM_LLM_TIMEOUT", value)
        assert main(["refine", "cyst", "--backend", "http", "--url", "http://127.0.0.1:9/v1",
                     "--no-cache"]) == 2
        err = capsys.readouterr().err
        assert "USVLM_LLM_TIMEOUT" in err and err.count("\n") == 1
    assert main(["refine", "cyst", "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "go with --input" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()


def test_cli_timeout_nan_in_a_real_process():
    run = subprocess.run(USVLM + ["refine", "cyst", "--backend", "http", "--url",
                                  "http://127.0.0.1:9/v1", "--timeout", "nan"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == ("usvlm refine: error: argument --timeout: the "
                                                   "timeout must be more than 0 and at most 3600 "
                                                   "seconds")


def test_broken_pipe_gives_no_traceback():
    with subprocess.Popen(USVLM + ["refine", "cyst", "--organ", "breast", "--no-cache",
                                   "--count", "50"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        proc.stdout.close()  # `| head -0`: the reader is gone before anything is printed
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err and err == ""
    assert code == 141


# -- HF backend: a model folder is data, never code -------------------------------------------------

class _Marker:
    """Unpickling this creates the marker file: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A 1-layer GPT-2 (random weights, safetensors) with MiniLM's BERT tokenizer."""
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def _folder_with_pickle(tiny_lm: Path, tmp_path: Path, weights: str) -> tuple[Path, Path]:
    folder = tmp_path / "model"
    shutil.copytree(tiny_lm, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "UNPICKLED"
    (folder / weights).write_bytes(pickle.dumps(_Marker(marker)))
    return folder, marker


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "adapter_model.bin"])
def test_pickled_weights_are_never_unpickled(tiny_lm, tmp_path, capsys, weights):
    folder, marker = _folder_with_pickle(tiny_lm, tmp_path, weights)
    if weights == "adapter_model.bin":  # the config itself names the pickle
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config,
                                                        "transformers_weights": weights}))
        (folder / "model.safetensors").write_bytes((tiny_lm / "model.safetensors").read_bytes())
    assert main(["refine", "cyst", "--backend", "hf", "--model", str(folder), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("safetensors" in err) and "Traceback" not in err
    assert not marker.exists()


def test_remote_code_in_a_model_folder_is_never_imported(tiny_lm, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_lm, folder)
    marker = tmp_path / "IMPORTED"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    for name in ("modeling_evil.py", "configuration_evil.py", "tokenization_evil.py"):
        (folder / name).write_text(code)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.Evil", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    backend = HFBackend(folder, max_new_tokens=4)
    try:
        backend.complete([{"role": "user", "content": "x"}])
    except InputError as exc:  # refusing is fine; running the folder's code is not
        assert "\n" not in str(exc)
    assert not marker.exists()


def test_hostile_hf_configs_are_one_line_errors(tiny_lm, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_lm, folder)
    (folder / "config.json").write_text('{"a": ' + DEEP + "}")
    with pytest.raises(InputError, match="nested too deeply"):
        HFBackend(folder).complete([{"role": "user", "content": "x"}])
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a JSON object"):
        HFBackend(folder).complete([{"role": "user", "content": "x"}])
    (folder / "config.json").write_text((tiny_lm / "config.json").read_text())
    os.mkfifo(folder / "tokenizer.json.fifo")
    os.replace(folder / "tokenizer.json.fifo", folder / "tokenizer.json")  # reading it would hang
    with pytest.raises(InputError, match="FIFO"):
        HFBackend(folder).complete([{"role": "user", "content": "x"}])
    (folder / "tokenizer.json").unlink()
    shutil.copy(tiny_lm / "tokenizer.json", folder / "tokenizer.json")
    (folder / "model.safetensors").rename(folder / "model-00001.safetensors")
    index = {"weight_map": {"lm_head.weight": "../../etc/passwd"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="weight_map must name safetensors files"):
        HFBackend(folder).complete([{"role": "user", "content": "x"}])


# -- Item 11: the output is never the input, never appended to, written atomically ------------------

def _batch(tmp_path: Path, *extra: str) -> int:
    return main(["refine", "--input", str(tmp_path / "in.jsonl"), "--no-cache", "--no-progress",
                 *extra])


@pytest.fixture
def captions(tmp_path) -> Path:
    return _captions(tmp_path / "in.jsonl", '{"id": "a", "text": "cyst", "organ": "breast"}',
                     '{"id": "b", "text": "thyroid nodule"}')


@pytest.mark.parametrize("how", ["same path", "other spelling", "hard link", "symlink"])
def test_output_onto_the_input_is_refused(tmp_path, captions, capsys, how):
    before = captions.read_bytes()
    out = {"same path": captions, "other spelling": tmp_path / "." / "sub" / ".." / "in.jsonl",
           "hard link": tmp_path / "link.jsonl", "symlink": tmp_path / "sym.jsonl"}[how]
    (tmp_path / "sub").mkdir()
    if how == "hard link":
        os.link(captions, out)
    elif how == "symlink":
        out.symlink_to(captions)
    for force in ([], ["--force"]):
        assert _batch(tmp_path, "-o", str(out), *force) == 2
        err = capsys.readouterr().err
        assert "is the --input file" in err and err.count("\n") == 1
    assert captions.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == \
        sorted(["in.jsonl", "sub"] + ([out.name] if how in ("hard link", "symlink") else []))


def test_existing_output_needs_force_and_is_replaced_whole(tmp_path, captions, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text("my notes, not refined captions\n")
    assert _batch(tmp_path, "-o", str(out)) == 2
    assert "exists; give --force" in capsys.readouterr().err
    assert out.read_text() == "my notes, not refined captions\n"
    assert _batch(tmp_path, "-o", str(out), "--force") == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]
    (tmp_path / "folder.jsonl").mkdir()
    assert _batch(tmp_path, "-o", str(tmp_path / "folder.jsonl"), "--force") == 2
    assert "not a regular file" in capsys.readouterr().err


def test_cache_file_may_not_be_the_input_or_output(tmp_path, captions, capsys):
    before = captions.read_bytes()
    out = tmp_path / "out.jsonl"
    for cache in (captions, out):
        assert main(["refine", "--input", str(captions), "-o", str(out), "--cache", str(cache),
                     "--no-progress"]) == 2
        assert "the --cache file is" in capsys.readouterr().err
    assert captions.read_bytes() == before and not out.exists()


def test_progress_of_another_input_is_not_reused(tmp_path, captions):
    out = tmp_path / "out.jsonl"
    stale = {"id": "a", "text": "something else", "organ": "breast", "style": "caption",
             "refined": ["STALE"], "backend": "bank", "model": "bank", "fallback": None}
    (tmp_path / ".out.jsonl.partial").write_text(json.dumps(stale) + "\n")
    assert _batch(tmp_path, "-o", str(out)) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", "b"] and records[0]["refined"] != ["STALE"]
    assert not (tmp_path / ".out.jsonl.partial").exists()


def test_failed_batch_leaves_no_output_and_says_where_progress_is(servers, tmp_path, captions,
                                                                 capsys):
    calls = []

    def behave(h: _Handler) -> None:
        calls.append(1)
        _good(h) if len(calls) == 1 else h.reply(400, b"{}")
    server = servers(behave)
    out = tmp_path / "out.jsonl"
    args = ["--backend", "http", "--url", server.url, "--no-fallback", "-o", str(out)]
    assert _batch(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert "HTTP 400" in err and "1 of 2 captions are saved" in err and err.count("\n") == 1
    assert not out.exists() and (tmp_path / ".out.jsonl.partial").exists()
    calls.clear()  # the server mends: the rerun asks only for the second caption
    assert _batch(tmp_path, *args) == 0 and len(calls) == 1
    assert not (tmp_path / ".out.jsonl.partial").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        server.behave = lambda h: h.reply(400, b"{}")
        (tmp_path / "o2.jsonl").unlink(missing_ok=True)
        assert _batch(tmp_path, "--backend", "http", "--url", server.url, "--no-fallback",
                      "-o", str(tmp_path / "o2.jsonl")) == 2
    assert not list(tmp_path.glob("*o2.jsonl*"))  # nothing saved: no progress file either
