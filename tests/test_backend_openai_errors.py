"""The OpenAI-compatible backend against a real local HTTP server (`http.server` on 127.0.0.1) that answers what a
broken or strict server answers: empty replies, 4xx/5xx errors, a rejected API key, nothing listening."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from processing_tte import TTEProcessor
from train.ecr_store import ECRStore
from train.generate_ecr import ECRRequest, OpenAIBackend, run_generation, write_failures

pytest.importorskip("openai")

MARKERS = ("NULL", "NOCHOICES", "BAD", "BUSY")


def _reply(marker: str | None) -> tuple[int, dict]:
    """What the fake server answers to a chat request whose prompt contains `marker`."""
    message = {"role": "assistant", "content": "<think>red card</think>\nAnswer: red"}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    if marker == "NULL":
        choice["message"] = {"role": "assistant", "content": None}
    if marker == "BAD":
        return 400, {"error": {"message": "bad request: unsupported content", "type": "invalid_request_error"}}
    if marker == "BUSY":
        return 503, {"error": {"message": "overloaded", "type": "server_error"}}
    choices = [] if marker == "NOCHOICES" else [choice]
    return 200, {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": choices,
                 "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}


@contextlib.contextmanager
def openai_like_server(gate: threading.Event | None = None):
    """A local OpenAI-like chat server on 127.0.0.1; yields (base URL, state): `state["models_status"]` sets the
    answer to GET /models, `state["hits"]` counts chat requests per marker. With `gate`, chat answers wait for it."""
    state = {"models_status": 200, "hits": Counter()}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if state["models_status"] != 200:
                self._send(state["models_status"], {"error": {"message": "invalid api key", "type": "auth"}})
            else:
                self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "created": 0,
                                                             "owned_by": "test"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = json.dumps(body["messages"])
            marker = next((m for m in MARKERS if m in text), None)
            state["hits"][marker] += 1
            if gate is not None:
                gate.wait(timeout=120)
            self._send(*_reply(marker))

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", state
    finally:
        if gate is not None:
            gate.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def server():
    with openai_like_server() as served:
        yield served


@pytest.fixture(scope="module")
def processor(tiny_qwen2_vl):
    return TTEProcessor.from_backbone(tiny_qwen2_vl)


def requests(*texts: str) -> list[ECRRequest]:
    return [ECRRequest("demo", i, "query", {"text": text}, "vqa") for i, text in enumerate(texts)]


def test_empty_content_and_no_choices_fail_their_rows_only(server, processor, tmp_path):
    url, state = server
    backend = OpenAIBackend(url, "m", processor, max_retries=2, backoff=0.01)
    store = ECRStore(tmp_path / "store")
    report = run_generation(requests("ok one", "say NULL", "say NOCHOICES", "ok two"), store, backend, batch_size=4,
                            show_progress=False)
    assert (report.done, report.failed) == (2, 2)
    reasons = dict(report.failures)
    assert "empty content (None" in reasons[("demo", "1", "query")]
    assert "without choices" in reasons[("demo", "2", "query")]
    assert len(ECRStore(tmp_path / "store")) == 2 and ("demo", "1", "query") not in store
    assert state["hits"]["NULL"] == state["hits"]["NOCHOICES"] == 1  # a reply, not a transient error: no retry
    logged = [json.loads(text) for text in write_failures(store, report.failures).read_text().splitlines()]
    assert [f["row_id"] for f in logged] == ["1", "2"]


def test_non_transient_4xx_is_sent_once_transient_5xx_is_retried(server, processor, tmp_path):
    url, state = server
    backend = OpenAIBackend(url, "m", processor, max_retries=3, backoff=0.01)
    report = run_generation(requests("say BAD", "say BUSY", "fine"), ECRStore(tmp_path / "store"), backend,
                            show_progress=False)
    assert state["hits"]["BAD"] == 1  # 400 is not retried
    assert state["hits"]["BUSY"] == 4  # 503: the request and 3 retries
    reasons = dict(report.failures)
    assert "answered 400, not retried" in reasons[("demo", "0", "query")]
    assert "retries" not in reasons[("demo", "0", "query")].split("not retried")[0]
    assert "after 3 retries" in reasons[("demo", "1", "query")] and report.done == 1


def test_rejected_api_key_says_authentication_failed(server, processor, tmp_path):
    url, state = server
    state["models_status"] = 401
    backend = OpenAIBackend(url, "m", processor, api_key="wrong", backoff=0.01)
    with pytest.raises(PermissionError, match="answered 401 to GET /models: authentication failed; check the API key"):
        run_generation(requests("fine"), ECRStore(tmp_path / "store"), backend, show_progress=False)
    assert sum(state["hits"].values()) == 0


def test_connection_refused_fails_fast_with_default_retries(processor, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", processor)  # default max_retries=5, backoff=1 s
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="Cannot reach an OpenAI-compatible server"):
        run_generation(requests("fine"), ECRStore(tmp_path / "store"), backend, show_progress=False)
    assert time.monotonic() - started < 5
