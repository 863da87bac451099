"""The text refiner: offline bank backend, a real chat-completions HTTP server on 127.0.0.1,
a tiny causal LM built offline, the JSONL cache, and `usvlm refine` (single text and batch)."""

from __future__ import annotations

import json
import re
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from models import save_tiny_lm

from usvlm.cli import main
from usvlm.errors import InputError
from usvlm.text.refiner import (TEMPLATE_VERSION, BankBackend, HFBackend, HTTPBackend, Refiner,
                                RefinerCache, RefinerError, RefinerFallbackWarning,
                                build_messages, parse_descriptions, refine)

CAPTION = ("irregular, spiculated, taller-than-wide, markedly hypoechoic mass with posterior "
           "acoustic shadowing")
LLM_REPLY = ["an irregular breast mass with spiculated margins",
             "a taller-than-wide, markedly hypoechoic breast lesion",
             "a breast mass casting a posterior acoustic shadow"]


# -- A real chat-completions server --------------------------------------------------------------

class _ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        state = self.server.state  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        state["requests"].append({"path": self.path, "body": body,
                                  "auth": self.headers.get("Authorization")})
        mode = state["modes"].pop(0) if state["modes"] else state["mode"]
        if mode == "slow":
            time.sleep(state["delay"])
            mode = "good"
        status, content_type, payload = 200, "application/json", None
        if mode == "good":
            payload = _completion(json.dumps(LLM_REPLY))
        elif mode == "chatty":
            payload = _completion("Sure! Here they are:\n```json\n" + json.dumps(LLM_REPLY) +
                                  "\n```\nHope this helps.")
        elif mode == "malformed":
            payload = _completion('Descriptions: "irregular mass", "dark mass"')
        elif mode == "numbers":
            payload = _completion("[1, 2, 3]")
        elif mode == "empty":
            payload = _completion("")
        elif mode == "nonjson":
            content_type, payload = "text/html", b"<html><body>502 Bad Gateway</body></html>"
        elif mode == "busy":
            status, payload = 503, b'{"error": "overloaded"}'
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def log_message(self, *args) -> None:  # keep test output clean
        pass


def _completion(content: str) -> bytes:
    message = {"role": "assistant", "content": content}
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "tiny",
                       "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}
                      ).encode()


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    httpd.daemon_threads = True
    httpd.state = {"mode": "good", "modes": [], "requests": [], "delay": 0.0}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _http(server, **options) -> HTTPBackend:
    options.setdefault("timeout", 5.0)
    return HTTPBackend(server.url, model="tiny", backoff=0.01, **options)


# -- Offline bank backend ------------------------------------------------------------------------

def test_bank_backend_is_deterministic_and_uses_the_lexicon():
    refiner = Refiner()
    assert refiner.backend.name == "bank"
    cyst = refiner.refine("cyst", "breast")
    assert cyst[0] == "an anechoic breast cyst with posterior acoustic enhancement"
    caption = refiner.refine(CAPTION, "breast", "caption")
    assert caption == refiner.refine(CAPTION, "breast", "caption")
    assert caption[0] == CAPTION
    expanded = next(t for t in caption if t.startswith("an ultrasound finding with"))
    assert "spiculated margin with thin lines radiating" in expanded
    assert "a breast mass on ultrasound" in caption  # the named structure's own prompts
    unknown = refine("hypoechoic blob", "thyroid")
    assert unknown[0] == "hypoechoic blob" and any("thyroid ultrasound" in t for t in unknown)
    assert len(Refiner(count=2).refine("breast cancer", "breast")) == 2
    with pytest.raises(InputError, match="no letters or digits"):
        refiner.refine("...", "breast")
    with pytest.raises(InputError, match="unknown refiner style"):
        refiner.refine("cyst", "breast", "poem")


# -- HTTP backend --------------------------------------------------------------------------------

def test_http_backend_sends_only_text_and_organ(server):
    refiner = Refiner(_http(server, api_key="sk-test"))
    assert refiner.refine("hypoechoic mass", "breast") == LLM_REPLY
    (request,) = server.state["requests"]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    body = request["body"]
    assert set(body) == {"model", "messages", "temperature", "max_tokens", "stream"}
    assert body["model"] == "tiny" and body["temperature"] == 0
    user = body["messages"][-1]["content"]
    assert "Label: hypoechoic mass" in user and "Organ: Breast." in user and "BI-RADS" in user
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_http_reply_with_chatter_and_fence_is_parsed(server):
    server.state["mode"] = "chatty"
    assert Refiner(_http(server)).refine(CAPTION, "breast", "caption") == LLM_REPLY


@pytest.mark.parametrize("mode, problem", [
    ("malformed", "not a JSON list"), ("numbers", "not a JSON list of strings"),
    ("empty", "reply is empty"), ("nonjson", "response is not JSON"),
])
def test_bad_replies_fall_back_to_the_bank(server, mode, problem):
    server.state["mode"] = mode
    with pytest.warns(RefinerFallbackWarning, match=problem) as record:
        texts = Refiner(_http(server)).refine("cyst", "breast")
    assert f"{server.url}/chat/completions" in str(record[0].message)
    assert texts == BankBackend().refine(Refiner().request("cyst", "breast"))
    with pytest.raises(RefinerError, match=problem):
        Refiner(_http(server), fallback=False).refine("cyst", "breast")


def test_slow_server_times_out_then_falls_back(server):
    server.state.update(mode="slow", delay=3.0)
    start = time.monotonic()
    expected = r"127\.0\.0\.1.*after 2 attempts \(timed out after 0\.3 s\)"
    with pytest.raises(RefinerError, match=expected):
        Refiner(_http(server, timeout=0.3, retries=1), fallback=False).refine("cyst", "breast")
    assert time.monotonic() - start < 2.0
    assert len(server.state["requests"]) == 2  # retried once
    with pytest.warns(RefinerFallbackWarning, match="timed out"):
        assert Refiner(_http(server, timeout=0.3, retries=0)).refine("cyst", "breast")


def test_busy_server_is_retried_with_backoff(server):
    server.state["modes"] = ["busy", "busy"]
    assert Refiner(_http(server, retries=2)).refine("cyst", "breast") == LLM_REPLY
    assert len(server.state["requests"]) == 3


def test_unreachable_endpoint_names_the_url():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = HTTPBackend(f"http://127.0.0.1:{port}/v1", timeout=1, retries=0)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    with pytest.raises(RefinerError, match=re.escape(url) + ": no answer"):
        backend.complete([{"role": "user", "content": "x"}])
    with pytest.raises(InputError, match="http:// or https://"):
        HTTPBackend("file:///etc/passwd")


def test_http_settings_from_environment(monkeypatch, server):
    monkeypatch.setenv("USVLM_LLM_URL", server.url)
    monkeypatch.setenv("USVLM_LLM_MODEL", "env-model")
    monkeypatch.setenv("USVLM_LLM_TIMEOUT", "4")
    backend = HTTPBackend.from_env()
    assert (backend.model, backend.timeout) == ("env-model", 4.0)
    monkeypatch.delenv("USVLM_LLM_URL")
    with pytest.raises(InputError, match="USVLM_LLM_URL"):
        Refiner("http")


# -- Cache ---------------------------------------------------------------------------------------

def test_cache_hit_avoids_a_second_request(server, tmp_path):
    cache = tmp_path / "cache" / "refiner.jsonl"
    first = Refiner(_http(server), cache=cache).refine_result("cyst", "breast")
    assert not first.cached and len(server.state["requests"]) == 1
    again = Refiner(_http(server), cache=cache).refine_result("cyst", "breast")  # a new process
    assert again.cached and again.texts == LLM_REPLY
    assert len(server.state["requests"]) == 1
    Refiner(_http(server), cache=cache).refine("cyst", "thyroid")  # another key: another request
    assert len(server.state["requests"]) == 2
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    assert [r["organ"] for r in records] == ["breast", "thyroid"]
    assert records[0]["template"] == TEMPLATE_VERSION and records[0]["model"] == "tiny"
    # Fallback answers are not cached: the LLM is asked again next time.
    server.state["mode"] = "empty"
    with pytest.warns(RefinerFallbackWarning):
        Refiner(_http(server), cache=cache).refine("mass", "breast")
    assert len(cache.read_text().splitlines()) == 2


def test_cache_survives_a_torn_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = RefinerCache(path)
    cache.put("a", ["one"])
    with open(path, "a") as f:
        f.write('{"key": "b", "outp')  # a crash mid-write
    fresh = RefinerCache(path)
    assert fresh.get("a") == ["one"] and fresh.get("b") is None
    fresh.put("c", ["three"])
    assert RefinerCache(path).get("c") == ["three"]


def test_parse_descriptions():
    assert parse_descriptions('{"descriptions": ["a", "b", "A", " ", "c\\u0000d"]}') == ["a", "b"]
    assert parse_descriptions(json.dumps([f"text {i}" for i in range(20)]), count=3) == \
        ["text 0", "text 1", "text 2"]
    for bad in ("", "[]", '["", "..."]', "{not json", '{"a": 1}'):
        with pytest.raises(RefinerError):
            parse_descriptions(bad)


# -- Local transformers backend ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A 1-layer GPT-2 built from a config (random weights) with MiniLM's BERT tokenizer."""
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def test_hf_backend_runs_a_local_causal_lm_and_falls_back(tiny_lm, tmp_path):
    backend = HFBackend(tiny_lm, max_new_tokens=12)
    reply = backend.complete(build_messages(Refiner().request("cyst", "breast")))
    assert isinstance(reply, str)  # random weights: garbage, but generated end to end
    with pytest.raises(RefinerError):
        parse_descriptions(reply)
    with pytest.warns(RefinerFallbackWarning, match="hf backend"):
        texts = Refiner(backend, cache=tmp_path / "c.jsonl").refine("cyst", "breast")
    assert texts == Refiner().refine("cyst", "breast")
    assert not (tmp_path / "c.jsonl").exists()


def test_hf_backend_bad_folders(tmp_path):
    with pytest.raises(InputError, match="local model folder"):
        HFBackend(tmp_path / "missing")
    with pytest.raises(InputError, match="no config.json"):
        HFBackend(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(InputError, match="no model.safetensors"):
        HFBackend(tmp_path).complete([{"role": "user", "content": "x"}])
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="cannot load a causal language model"):
        HFBackend(tmp_path).complete([{"role": "user", "content": "x"}])


# -- usvlm refine --------------------------------------------------------------------------------

def test_cli_single_text_json(capsys):
    assert main(["refine", "breast cancer", "--organ", "breast", "--json", "--no-cache"]) == 0
    texts = json.loads(capsys.readouterr().out)
    assert isinstance(texts, list) and len(texts) == 8 and all(isinstance(t, str) for t in texts)
    assert main(["refine", "cyst", "--organ", "knee", "--no-cache"]) == 2
    assert "unknown organ 'knee'" in capsys.readouterr().err
    assert main(["refine", "--no-cache"]) == 2


def test_cli_http_with_cache(server, tmp_path, capsys):
    args = ["refine", "cyst", "--organ", "breast", "--backend", "http", "--url", server.url,
            "--model", "tiny", "--cache", str(tmp_path / "cache.jsonl")]
    assert main(args) == 0 and main(args) == 0
    assert capsys.readouterr().out.splitlines()[:3] == LLM_REPLY
    assert len(server.state["requests"]) == 1


def _captions(path: Path) -> Path:
    lines = [{"id": "a", "text": "benign mass", "organ": "breast"},
             {"id": "b", "caption": CAPTION, "organ": "breast"},
             {"id": "c", "text": "thyroid nodule with microcalcifications"},
             {"id": "p7", "organ": "neck", "structures": [
                 {"description": "round, circumscribed, heterogeneous hypoechoic lymph node "
                                 "without fatty hilum"},
                 {"description": "oval, circumscribed, parallel, hypoechoic lymph node with "
                                 "echogenic fatty hilum"}]}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_cli_batch_resumes_after_interruption(tmp_path, monkeypatch, capsys):
    source, output = _captions(tmp_path / "captions.jsonl"), tmp_path / "refined.jsonl"
    args = ["refine", "--input", str(source), "-o", str(output), "--organ", "thyroid",
            "--no-progress", "--no-cache"]
    calls = []
    original = Refiner.refine_result

    def interrupted(self, text, organ=None, style="label"):
        calls.append(text)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, text, organ, style)

    monkeypatch.setattr(Refiner, "refine_result", interrupted)
    assert main(args) == 130
    assert "2 of 5 captions are saved" in capsys.readouterr().err
    assert not output.exists()
    partial = tmp_path / ".refined.jsonl.partial"
    with open(partial, "a") as f:
        f.write('{"id": "c", "text": "thyr')  # torn by the interruption
    monkeypatch.setattr(Refiner, "refine_result", original)
    calls.clear()
    monkeypatch.setattr(Refiner, "refine_result",
                        lambda self, *a: calls.append(a[0]) or original(self, *a))
    assert main(args) == 0
    assert len(calls) == 3  # only the captions not yet done
    records = {r["id"]: r for r in map(json.loads, output.read_text().splitlines())}
    assert list(records) == ["a", "b", "c", "p7/0", "p7/1"]
    assert records["c"]["organ"] == "thyroid"  # --organ fills in where a record has none
    assert records["p7/0"]["organ"] == "neck" and records["b"]["style"] == "caption"
    assert all(r["refined"] and r["backend"] == "bank" and r["fallback"] is None
               for r in records.values())
    assert not partial.exists()
    # A finished output is never appended to: a rerun is refused unless --force replaces it.
    with open(source, "a") as f:
        f.write(json.dumps({"id": "d", "text": "cyst", "organ": "breast"}) + "\n")
    before = output.read_bytes()
    calls.clear()
    assert main(args) == 2 and calls == [] and output.read_bytes() == before
    assert "exists; give --force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0 and len(calls) == 6
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == \
        ["a", "b", "c", "p7/0", "p7/1", "d"]


def test_cli_batch_with_http_backend_and_bad_input(server, tmp_path, capsys):
    source, output = _captions(tmp_path / "captions.jsonl"), tmp_path / "refined.jsonl"
    base = ["refine", "--backend", "http", "--url", server.url, "--model", "tiny",
            "--no-progress", "--cache", str(tmp_path / "cache.jsonl")]
    server.state["modes"] = ["good", "empty"]  # the second caption falls back to the bank
    assert main(base + ["--input", str(source), "-o", str(output), "--retries", "0"]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert records[0]["refined"] == LLM_REPLY and records[0]["backend"] == "http"
    assert records[1]["backend"] == "bank" and "reply is empty" in records[1]["fallback"]
    assert "1 captions used the offline bank" in capsys.readouterr().err
    assert len(server.state["requests"]) == 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "text": "???"}\n')
    assert main(base + ["--input", str(bad), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "caption 'x'" in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()
    assert main(base + ["--input", str(bad)]) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["refine", "cyst", "--input", str(bad), "-o", str(output)]) == 2
