"""The OpenAI-compatible backend against a real `transformers serve` process on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from processing_tte import TTEProcessor
from train.ecr_store import ECRStore
from train.generate_ecr import ECRRequest, LocalBackend, OpenAIBackend, run_generation

pytest.importorskip("openai")
pytest.importorskip("fastapi")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_qwen2_vl, tmp_path_factory):
    """`transformers serve <tiny checkpoint>` on a free loopback port; yields its API base URL; always killed."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", tiny_qwen2_vl,
                                    "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                                   env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve was not ready within 120 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def requests_with_images(folder, missing: str | None = None) -> list[ECRRequest]:
    requests = []
    for i, colour in enumerate(["red", "green", "blue"]):
        path = folder / f"{colour}.png"
        if colour != missing:
            Image.new("RGB", (32, 32), colour).save(path)
        requests.append(ECRRequest("demo", i, "query", {"image": str(path), "text": "What colour is it?"}, "vqa"))
        requests.append(ECRRequest("demo", i, "target", {"text": colour}, "vqa"))
    return requests


def test_served_backend_writes_local_record_shape(served, tiny_qwen2_vl, tmp_path):
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    requests = requests_with_images(tmp_path)
    remote = OpenAIBackend(served, tiny_qwen2_vl, processor, name="teacher", max_new_tokens=6, max_concurrency=3,
                           backoff=0.05)
    report = run_generation(requests, ECRStore(tmp_path / "remote"), remote, batch_size=6, show_progress=False)
    assert (report.done, report.failed) == (6, 0) and 0 < report.mean_ecr_tokens <= 6
    local = LocalBackend(tiny_qwen2_vl, processor, name="teacher", max_new_tokens=6)
    run_generation(requests, ECRStore(tmp_path / "local"), local, show_progress=False)
    served_records = {r.key: r for r in ECRStore(tmp_path / "remote")}
    local_records = {r.key: r for r in ECRStore(tmp_path / "local")}
    assert served_records.keys() == local_records.keys() and len(served_records) == 6
    for key, record in served_records.items():
        twin = local_records[key]
        assert [f.name for f in dataclasses.fields(record)] == [f.name for f in dataclasses.fields(twin)]
        assert record.reasoner == twin.reasoner == "teacher"
        assert record.prompt_hash == twin.prompt_hash  # the same prompt reached both reasoners
        assert isinstance(record.ecr, str) and record.ecr
        assert record.answer is None or isinstance(record.answer, str)
    again = run_generation(requests, ECRStore(tmp_path / "remote"), remote, show_progress=False)
    assert again.skipped == 6 and remote.requests_sent == 6  # no request for finished rows


def test_missing_image_fails_only_its_row(served, tiny_qwen2_vl, tmp_path):
    backend = OpenAIBackend(served, tiny_qwen2_vl, tiny_qwen2_vl, max_new_tokens=2, backoff=0.05)
    store = ECRStore(tmp_path / "store")
    report = run_generation(requests_with_images(tmp_path, missing="green"), store, backend, show_progress=False)
    assert report.done == 5 and [key for key, _ in report.failures] == [("demo", "1", "query")]
    assert "demo/1/query" in report.failures[0][1] and "green.png" in report.failures[0][1]


def test_unknown_model_is_a_clear_error(served, tiny_qwen2_vl, tmp_path):
    backend = OpenAIBackend(served, "no-such/model", tiny_qwen2_vl, backoff=0.01, max_retries=1)
    with pytest.raises(ValueError, match="does not serve model 'no-such/model'"):
        run_generation(requests_with_images(tmp_path), ECRStore(tmp_path / "store"), backend, show_progress=False)
    assert not (tmp_path / "store").exists()


def test_bad_url_is_a_clear_error(served, tiny_qwen2_vl, tmp_path):
    requests = requests_with_images(tmp_path)
    nothing_there = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", tiny_qwen2_vl, tiny_qwen2_vl,
                                  max_retries=2, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="Cannot reach an OpenAI-compatible server"):
        run_generation(requests, ECRStore(tmp_path / "store"), nothing_there, show_progress=False)
    assert time.monotonic() - started < 30
    not_the_api_base = OpenAIBackend(served.removesuffix("/v1"), tiny_qwen2_vl, tiny_qwen2_vl, backoff=0.01)
    with pytest.raises(ConnectionError, match="404"):
        run_generation(requests, ECRStore(tmp_path / "store"), not_the_api_base, show_progress=False)
