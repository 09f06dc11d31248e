"""The MMEB harness end to end with a tiny TTE model, on fixtures written in the published layouts: the CLI on one
task of every family in each data-source mode, --check-data, provenance (a changed ECR store or changed images are
scored again), resume, remote code only on request, and a real 2-process `accelerate launch`."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from eval.metrics import score_keys
from eval.run_mmeb import main
from tests import fixtures_image, fixtures_video, fixtures_visdoc
from train.ecr_store import ECRRecord, ECRStore

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
FAMILY_TASKS = {  # one task of every loader family (MMEB-V1 is scored with --benchmark v1)
    "image": ("MSCOCO_t2i", fixtures_image), "video_retrieval": ("MSR-VTT", fixtures_video),
    "video_classification": ("HMDB51", fixtures_video), "video_qa": ("NExTQA", fixtures_video),
    "moment_retrieval": ("QVHighlight", fixtures_video), "visdoc": ("ViDoRe_arxivqa", fixtures_visdoc)}


@pytest.fixture(scope="module")
def tte_model(tiny_qwen2_vl, tmp_path_factory) -> Path:
    from modeling_tte import TTEForEmbedding
    from processing_tte import TTEProcessor

    folder = tmp_path_factory.mktemp("tte-model")
    TTEForEmbedding.from_backbone(tiny_qwen2_vl).save_pretrained(folder)
    TTEProcessor.from_backbone(tiny_qwen2_vl).save_pretrained(folder)
    return folder


def source_args(kwargs: dict) -> list[str]:
    """CLI flags for the `DataSource` keyword arguments a fixture writer returned."""
    flags = {"data_root": "--data-root", "mmeb_root": "--mmeb-root", "cache_dir": "--mmeb-cache",
             "hub_cache": "--hub-cache"}
    return [part for key, value in kwargs.items() if value is not None for part in (flags[key], str(value))]


def write_family_tasks(layout: str, root: Path) -> dict[str, list[str]]:
    """Every family's task in `layout` under `root`; task name -> its data-source flags."""
    return {task: source_args(module.write(task, layout, root)) for task, module in FAMILY_TASKS.values()}


@pytest.mark.parametrize("layout", ["hub", "snapshot", "save_to_disk"])
def test_cli_scores_every_family_in_each_data_source_mode(tte_model, tmp_path, layout):
    tasks = write_family_tasks(layout, tmp_path / "data")
    for task, flags in tasks.items():
        assert main(["--check-data", "--tasks", task, *flags])[task]["ok"]
        scores = main(["--model", str(tte_model), "--tasks", task, *flags, "--ecr-mode", "none",
                       "--out", str(tmp_path / "out"), "--batch-size", "4"])
        assert list(scores[task]) == score_keys() and scores[task]["num_pred"] > 0
    v1 = source_args(fixtures_image.write("ImageNet-1K", layout, tmp_path / "v1", benchmark="mmeb_v1"))
    scores = main(["--model", str(tte_model), "--benchmark", "v1", "--tasks", "ImageNet-1K", *v1,
                   "--ecr-mode", "none", "--out", str(tmp_path / "out")])
    assert scores["ImageNet-1K"]["num_pred"] > 0
    board = json.loads((tmp_path / "out" / "mmeb_v2" / f"{tte_model.name}.json").read_text())
    assert all(isinstance(board["metrics"][spec_modality(t)][t], dict) for t in tasks)


def spec_modality(task: str) -> str:
    from eval.tasks import get_task

    return get_task(task).modality


def test_check_data_reports_missing_media_without_a_model(tmp_path, capsys):
    flags = source_args(fixtures_video.write("MSR-VTT", "snapshot", tmp_path))
    assert main(["--check-data", "--tasks", "MSR-VTT", *flags])["MSR-VTT"]["ok"]
    with pytest.raises(SystemExit):
        main(["--check-data", "--tasks", "MSR-VTT", "--data-root", str(tmp_path / "nowhere"),
              "--mmeb-root", str(tmp_path / "nowhere")])
    assert "MISSING MSR-VTT" in capsys.readouterr().out


def _ecr_store(folder: Path, task: str, text: str, source_flags: list[str]) -> ECRStore:
    """An ECR store with one record for every query and candidate of `task`."""
    from eval.ecr import ecr_keys
    from eval.mmeb import DataSource, load_task
    from eval.tasks import get_task

    args = dict(zip(source_flags[::2], source_flags[1::2], strict=True))
    source = DataSource(args.get("--data-root"), args.get("--mmeb-root"), args.get("--mmeb-cache"),
                        args.get("--hub-cache"))
    store = ECRStore(folder)
    keys = ecr_keys(load_task(get_task(task), source))
    store.add(ECRRecord(d, r, s, f"<think>{text} {r}</think> Answer: {text}", text, "test", "0") for d, r, s in keys)
    return store


def test_rerun_reuses_a_score_only_from_the_same_inputs(tte_model, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    flags = source_args(fixtures_image.write("MSCOCO_t2i", "snapshot", tmp_path / "data"))
    out = tmp_path / "out"
    for name in ("a", "b"):
        _ecr_store(tmp_path / f"ecr-{name}", "MSCOCO_t2i", f"trace {name}", flags)
    run = ["--model", str(tte_model), "--tasks", "MSCOCO_t2i", *flags, "--out", str(out)]
    first = main(run + ["--ecr-store", str(tmp_path / "ecr-a")])
    score_file = out / "mmeb_v2" / "image" / "MSCOCO_t2i_score.json"
    stamp = score_file.stat().st_mtime_ns
    caplog.clear()
    assert main(run + ["--ecr-store", str(tmp_path / "ecr-a")]) == first  # same inputs: reused
    assert score_file.stat().st_mtime_ns == stamp and "reusing" in caplog.text
    caplog.clear()
    main(run + ["--ecr-store", str(tmp_path / "ecr-b")])  # another ECR store: scored again, and said so
    assert score_file.stat().st_mtime_ns != stamp and "scored before from other inputs" in caplog.text
    provenance = json.loads(score_file.with_name("MSCOCO_t2i_provenance.json").read_text())
    assert provenance["ecr_store"] == str((tmp_path / "ecr-b").resolve())
    images = sorted((tmp_path / "data").rglob("*.png")) + sorted((tmp_path / "data").rglob("*.jpg"))
    from PIL import Image

    Image.new("RGB", (32, 32), "purple").save(images[0])  # an image overwritten at the same path
    stamp = score_file.stat().st_mtime_ns
    main(run + ["--ecr-store", str(tmp_path / "ecr-b")])
    assert score_file.stat().st_mtime_ns != stamp


def test_model_folder_code_runs_only_with_trust_remote_code(tte_model, tmp_path):
    from eval.harness import load_model

    folder = tmp_path / "model"
    subprocess.run(["cp", "-r", str(tte_model), str(folder)], check=True)
    marker = tmp_path / "ran"
    (folder / "marker_tokenizer.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import Qwen2TokenizerFast\n\n\nclass MarkerTokenizer(Qwen2TokenizerFast):\n    pass\n")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": [None, "marker_tokenizer.MarkerTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    load_model(folder, "none")
    assert not marker.exists()
    load_model(folder, "none", trust_remote_code=True)
    assert marker.exists()  # the marker proves the check above could fail


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], log: Path, timeout: int = 300) -> str:
    """Run `command` in its own session with output to a file (never a pipe a stray worker could hold); on a
    timeout kill the whole session and fail."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"timed out after {timeout} s: {' '.join(command)}\n{log.read_text()[-4000:]}")
    output = log.read_text()
    assert process.returncode == 0, output[-6000:]
    return output


@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate CLI is not next to this Python")
def test_two_processes_score_as_one(tte_model, tmp_path):
    flags = []
    for task in ("MSCOCO_t2i", "MSR-VTT"):
        module = fixtures_image if task == "MSCOCO_t2i" else fixtures_video
        flags = source_args(module.write(task, "snapshot", tmp_path / "data"))
    run = ["-m", "eval.run_mmeb", "--model", str(tte_model), "--tasks", "MSCOCO_t2i,MSR-VTT", *flags,
           "--ecr-mode", "none", "--batch-size", "2"]
    _run([sys.executable, *run, "--out", str(tmp_path / "one")], tmp_path / "one.log")
    launch = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    output = _run([*launch, *run, "--out", str(tmp_path / "two")], tmp_path / "two.log")
    assert "process 1/2" in output and "process 2/2" in output
    for modality, task in (("image", "MSCOCO_t2i"), ("video", "MSR-VTT")):
        one, two = (json.loads((tmp_path / run_dir / "mmeb_v2" / modality / f"{task}_score.json").read_text())
                    for run_dir in ("one", "two"))
        assert one == pytest.approx(two, abs=1e-6)


def _writer(spec):
    return fixtures_visdoc if spec.modality == "visdoc" else fixtures_video if spec.modality == "video" \
        else fixtures_image


def test_check_data_finds_every_task_of_both_benchmarks(tmp_path):
    from eval.tasks import all_tasks

    for spec in all_tasks("mmeb_v2").values():
        flags = source_args(_writer(spec).write(spec.name, "snapshot", tmp_path / "v2"))
    reports = main(["--check-data", "--tasks", "all", *flags])
    assert len(reports) == 78 and all(r["ok"] for r in reports.values())
    for spec in all_tasks("mmeb_v1").values():
        flags = source_args(fixtures_image.write(spec.name, "save_to_disk", tmp_path / "v1", benchmark="mmeb_v1"))
    reports = main(["--check-data", "--benchmark", "v1", "--tasks", "all", *flags])
    assert len(reports) == 36 and all(r["ok"] for r in reports.values())


def test_a_reasoner_thinks_for_every_family_then_nothing_is_regenerated(tiny_qwen2_vl, tte_model, tmp_path):
    from eval.ecr import ecr_keys
    from eval.mmeb import DataSource, load_task
    from eval.tasks import get_task

    tasks = ["MSCOCO_t2i", "SmthSmthV2", "NExTQA", "MSR-VTT", "QVHighlight", "ViDoRe_arxivqa"]
    for task in tasks:
        kwargs = _writer(get_task(task)).write(task, "snapshot", tmp_path / "data")
    store_dir = tmp_path / "ecr"
    run = ["--model", str(tte_model), "--tasks", ",".join(tasks), *source_args(kwargs), "--ecr-store",
           str(store_dir), "--reasoner-max-new-tokens", "3"]
    scores = main(run + ["--reasoner", tiny_qwen2_vl, "--out", str(tmp_path / "first")])
    assert set(scores) == set(tasks)
    store = ECRStore(store_dir)
    for task in tasks:
        keys = ecr_keys(load_task(get_task(task), DataSource(**kwargs)))
        assert store.missing(keys) == [], task
        assert {store.get(*key).reasoner for key in keys} == {tiny_qwen2_vl}
    lines = (store_dir / "eval-rank0.jsonl").read_text()
    # a complete store: a reasoner that cannot load is never needed, and nothing is written
    again = main(run + ["--reasoner", str(tmp_path / "no-such-reasoner"), "--out", str(tmp_path / "second")])
    assert (store_dir / "eval-rank0.jsonl").read_text() == lines and again == scores
