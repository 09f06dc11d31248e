"""ECR generation with the local backend: batching, the store, resumption after SIGKILL, failures, the CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from processing_tte import parse_ecr
from train.ecr_store import ECRStore
from train.generate_ecr import ECRRequest, LocalBackend, build_requests, main, run_generation
from train.mmeb_data import MMEBDatasetConfig, load_mmeb_pairs

REPO = Path(__file__).resolve().parent.parent
COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]


def write_mmeb(folder: Path, rows: int = 8, missing_image: int | None = None) -> tuple[Path, Path]:
    """An MMEB-train-format jsonl (image queries, text targets) and its image root, with real PNG files."""
    root = folder / "images"
    (root / "cards").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        colour = COLOURS[i % len(COLOURS)]
        size = (32, 32) if i % 2 else (48, 32)  # two image sizes: different image-token counts per row
        if i != missing_image:
            Image.new("RGB", size, colour).save(root / "cards" / f"{i}.png")
        lines.append({"qry": f"<|image_1|>\nWhat colour is card {i}?" + " big" * (i % 3),
                      "qry_image_path": f"cards/{i}.png", "pos_text": colour, "pos_image_path": ""})
    data = folder / "demo.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return data, root


def demo_requests(folder: Path, **kwargs) -> list[ECRRequest]:
    data, root = write_mmeb(folder, **kwargs)
    pairs = load_mmeb_pairs(MMEBDatasetConfig(name="demo", path=str(data), task_type="vqa"), image_root=root)
    return build_requests(pairs, "vqa")


def test_mmeb_loader_maps_placeholders_and_paths(tmp_path):
    data, root = write_mmeb(tmp_path, rows=2)
    pairs = load_mmeb_pairs(MMEBDatasetConfig(name="demo", path=str(data)), image_root=root)
    assert [p.row_id for p in pairs] == ["0", "1"]
    assert pairs[0].query == {"text": "What colour is card 0?", "image": str(root / "cards" / "0.png")}
    assert pairs[1].target == {"text": "green"}
    with pytest.raises(ValueError, match="lacks the MMEB columns"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"qry": "x"}) + "\n")
        load_mmeb_pairs(MMEBDatasetConfig(name="bad", path=str(bad)))


def test_batched_greedy_equals_one_at_a_time(tiny_qwen2_vl, tmp_path):
    requests = demo_requests(tmp_path, rows=5)
    requests.append(ECRRequest("demo", "x", "query", {"text": "Describe a red circle."}, "retrieval"))
    backend = LocalBackend(tiny_qwen2_vl, max_new_tokens=12)
    backend.check()
    batched = backend.generate(requests)
    single = [backend.generate([request])[0] for request in requests]
    assert all(out.error is None and out.num_tokens > 0 for out in batched)
    assert [out.text for out in batched] == [out.text for out in single]
    assert [out.prompt_hash for out in batched] == [out.prompt_hash for out in single]
    assert len({out.prompt_hash for out in batched}) == len(requests)  # every prompt differs


def test_store_one_record_per_key_second_run_no_model_work(tiny_qwen2_vl, tmp_path):
    requests = demo_requests(tmp_path, rows=4)
    backend = LocalBackend(tiny_qwen2_vl, name="tiny-reasoner", max_new_tokens=8)
    store = ECRStore(tmp_path / "store")
    report = run_generation(requests + requests[:3], store, backend, batch_size=3, show_progress=False)
    assert (report.total, report.done, report.skipped, report.failed) == (8, 8, 0, 0)
    assert report.mean_ecr_tokens == 8 and report.rows_per_second > 0
    lines = store.part_path.read_text().splitlines()
    keys = [(r["dataset"], r["row_id"], r["side"]) for r in map(json.loads, lines)]
    assert len(keys) == len(set(keys)) == 8
    record = ECRStore(tmp_path / "store").get("demo", "2", "query")
    assert record.reasoner == "tiny-reasoner" and record.ecr and len(record.prompt_hash) == 16
    generated = backend.generated_rows
    again = run_generation(requests, ECRStore(tmp_path / "store"), backend, batch_size=3, show_progress=False)
    assert (again.done, again.skipped, again.failed) == (0, 8, 0)
    assert backend.generated_rows == generated
    fresh = LocalBackend(tiny_qwen2_vl, name="tiny-reasoner", max_new_tokens=8)  # the same reasoner, never loaded:
    # nothing to do means no model at all
    run_generation(requests, ECRStore(tmp_path / "store"), fresh, show_progress=False)
    assert fresh.model is None and fresh.generated_rows == 0
    assert store.part_path.read_text().splitlines() == lines


def test_missing_image_is_a_named_failure_others_done(tiny_qwen2_vl, tmp_path):
    requests = demo_requests(tmp_path, rows=4, missing_image=2)
    store = ECRStore(tmp_path / "store")
    report = run_generation(requests, store, LocalBackend(tiny_qwen2_vl, max_new_tokens=4), batch_size=8,
                            show_progress=False)
    assert report.done == 7 and [key for key, _ in report.failures] == [("demo", "2", "query")]
    reason = report.failures[0][1]
    assert "FileNotFoundError" in reason and "demo/2/query" in reason and "2.png" in reason
    assert ("demo", "2", "query") not in store and ("demo", "2", "target") in store
    assert "FAILED demo/2/query" in report.summary()


def test_bad_requests_raise_named_errors():
    with pytest.raises(ValueError, match="task_type"):
        ECRRequest("demo", "1", "query", {"text": "x"}, "poetry")
    with pytest.raises(ValueError, match="side"):
        ECRRequest("demo", "1", "candidate", {"text": "x"}, "vqa")


def _cli_args(tiny: str, data: Path, root: Path, store: Path) -> list[str]:
    dataset = json.dumps({"name": "demo", "path": str(data), "task_type": "vqa"})
    return ["--config", str(REPO / "train" / "recipes" / "tiny_ecr.yaml"), "--model", tiny, "--store", str(store),
            "--image_root", str(root), "--datasets", dataset,
            "--batch_size", "2", "--max_new_tokens", "24", "--show_progress", "false"]


def test_sigkill_mid_run_then_restart_equals_uninterrupted(tiny_qwen2_vl, tmp_path, capsys):
    data, root = write_mmeb(tmp_path, rows=12)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "train.generate_ecr", *_cli_args(tiny_qwen2_vl, data, root,
                                                                                      killed)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    part = killed / "rank0.jsonl"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if part.exists() and part.read_bytes().count(b"\n") >= 4:
                break
            time.sleep(0.02)
        assert process.poll() is None, f"the job ended before it could be killed:\n{process.stdout.read().decode()}"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    written = part.read_bytes().count(b"\n")
    assert 4 <= written < 24, "the kill must land mid-run"
    with open(part, "ab") as handle:  # as if the kill had torn the line being written
        handle.write(b'{"dataset": "demo", "row_id": "11", "si')

    assert main(_cli_args(tiny_qwen2_vl, data, root, killed)) == 0
    assert f"{24 - written} generated, {written} already in the store, 0 failed" in capsys.readouterr().out
    assert main(_cli_args(tiny_qwen2_vl, data, root, clean)) == 0
    capsys.readouterr()
    resumed, uninterrupted = ECRStore(killed), ECRStore(clean)
    assert len(resumed) == 24
    assert {r.key: r for r in resumed} == {r.key: r for r in uninterrupted}
    lines = part.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == 24 and all(json.loads(line) for line in lines[:-1])

    before = part.read_bytes()
    assert main(_cli_args(tiny_qwen2_vl, data, root, killed)) == 0  # finished: no model work, nothing written
    assert "0 generated, 24 already in the store, 0 failed" in capsys.readouterr().out
    assert part.read_bytes() == before


def test_cli_exit_status_and_failure_log(tiny_qwen2_vl, tmp_path, capsys):
    data, root = write_mmeb(tmp_path, rows=3, missing_image=1)
    args = _cli_args(tiny_qwen2_vl, data, root, tmp_path / "store")
    assert main(args + ["--max_new_tokens", "2", "--sides", "query"]) == 1
    out = capsys.readouterr().out
    assert "2 generated" in out and "1 failed" in out and "FAILED demo/1/query" in out
    logged = [json.loads(line) for line in (tmp_path / "store" / "failures" / "rank0.jsonl").read_text().splitlines()]
    assert [(f["dataset"], f["row_id"], f["side"]) for f in logged] == [("demo", "1", "query")]
    assert "1.png" in logged[0]["reason"]
    assert len(ECRStore(tmp_path / "store")) == 2


@pytest.mark.parametrize("recipe", sorted((REPO / "train" / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_name_only_known_fields(recipe):
    import dataclasses

    import yaml
    from trl import ModelConfig, SFTConfig

    from train.distill_reasoner import DistillArguments
    from train.generate_ecr import GenerateECRArguments
    from train.mmeb_data import dataset_config
    from train.train_embedder import DataArguments, ModelArguments
    from train.trainer import TTEContrastiveConfig

    config = yaml.safe_load(recipe.read_text())
    if recipe.name.startswith("distill_"):
        classes = (DistillArguments, SFTConfig, ModelConfig)
    elif recipe.name.startswith("embed_"):
        classes = (ModelArguments, DataArguments, TTEContrastiveConfig)
        config.pop("datasets", None)  # a YAML file of DatasetSpecs, checked by the embedder's own tests
    else:
        classes = (GenerateECRArguments,)
    known = {f.name for cls in classes for f in dataclasses.fields(cls)}
    assert set(config) <= known, f"{recipe.name}: unknown keys {set(config) - known}"
    for spec in config.get("datasets", []):
        dataset_config(spec)


def test_accelerate_two_processes_shard_rows(tiny_qwen2_vl, tmp_path, capsys):
    data, root = write_mmeb(tmp_path, rows=5)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    port = 29500 + os.getpid() % 1000
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port), "-m", "train.generate_ecr"]
    done = subprocess.run(launch + _cli_args(tiny_qwen2_vl, data, root, tmp_path / "sharded"), cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "process 1/2" in done.stdout and "process 2/2" in done.stdout
    parts = [ECRStore(tmp_path / "sharded", part=f"rank{rank}").part_path for rank in (0, 1)]
    keys = [{(r["dataset"], r["row_id"], r["side"]) for r in map(json.loads, part.read_text().splitlines())}
            for part in parts]
    assert len(keys[0]) == len(keys[1]) == 5 and not keys[0] & keys[1]
    assert main(_cli_args(tiny_qwen2_vl, data, root, tmp_path / "single")) == 0
    capsys.readouterr()
    assert {r.key: r for r in ECRStore(tmp_path / "sharded")} == {r.key: r for r in ECRStore(tmp_path / "single")}


@pytest.mark.parametrize("flag", ["--batch_size", "--max_new_tokens", "--max_concurrency"])
def test_non_positive_sizes_fail_before_any_data_is_read(flag, tmp_path):
    datasets = json.dumps({"name": "d", "path": str(tmp_path / "absent.jsonl")})
    with pytest.raises(ValueError, match=f"{flag[2:]} must be a positive integer"):
        main(["--model", "m", "--store", str(tmp_path / "s"), "--datasets", datasets, flag, "0"])


def test_media_tokens_a_model_generates_are_removed_from_the_trace(tiny_qwen2_vl, caplog):
    backend = LocalBackend(tiny_qwen2_vl, max_new_tokens=4)
    backend.check()
    tokenizer = backend.processor.tokenizer
    tokens = tokenizer("<think>red</think> Answer: <|image_pad|>red<|image_pad|>", add_special_tokens=False)
    with caplog.at_level("WARNING"):
        text = backend._text(tokens["input_ids"])
    assert text == "<think>red</think> Answer: red"
    assert "media tokens" in caplog.text


def test_a_thinking_budget_caps_the_trace_and_a_forced_answer_keeps_it_parsable(tiny_qwen2_vl):
    from eval.synthetic.scenes import random_scene

    scenes = [random_scene(random.Random(i)) for i in range(6)]
    requests = [ECRRequest("toy", str(i), "query", {"image": s.render(), "text": "Which colour?"}, "vqa")
                for i, s in enumerate(scenes)]
    outputs = {}
    for force in (0, 5):
        backend = LocalBackend(tiny_qwen2_vl, max_new_tokens=6, force_answer_tokens=force)
        backend.check()
        outputs[force] = backend.generate(requests)
    assert all(o.num_tokens <= 6 for o in outputs[0])
    cut = [i for i, o in enumerate(outputs[0]) if parse_ecr(o.text).answer is None]
    assert cut, "the random tiny model should run into the budget without an answer"
    for i, (plain, forced) in enumerate(zip(outputs[0], outputs[5], strict=True)):
        if i in cut:
            assert forced.text.startswith(plain.text) and "Answer:" in forced.text[len(plain.text):]
            assert parse_ecr(forced.text).answer and 6 < forced.num_tokens <= 6 + 4 + 5
        else:
            assert forced.text == plain.text
    assert LocalBackend(tiny_qwen2_vl, force_answer_tokens=5).identity != LocalBackend(tiny_qwen2_vl).identity
