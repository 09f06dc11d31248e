"""End-to-end MMEB evaluation of a tiny TTE model on small on-disk tasks: files, key sets, ECR from the store,
the no-ECR baseline, the embedding cache, sharding, resume after an interrupted run, and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from eval.cache import EmbeddingCache, item_key, model_fingerprint
from eval.ecr import MissingECRError, attach_ecr, ecr_keys
from eval.encode import Encoder
from eval.harness import load_model, run_tasks
from eval.loaders import load_task
from eval.metrics import score_keys
from eval.tasks import get_task, select_tasks
from tests.mmeb_fixtures import V2_TASKS, VIDOC, write_all
from train.ecr_store import ECRRecord, ECRStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tte_model(tiny_qwen2_vl, tmp_path_factory) -> Path:
    from modeling_tte import TTEForEmbedding
    from processing_tte import TTEProcessor

    folder = tmp_path_factory.mktemp("tte-model")
    TTEForEmbedding.from_backbone(tiny_qwen2_vl).save_pretrained(folder)
    TTEProcessor.from_backbone(tiny_qwen2_vl).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_all(tmp_path_factory.mktemp("mmeb"))


def _encoder(tte_model, ecr_mode="none"):
    model, processor = load_model(tte_model, ecr_mode)
    return Encoder(model, processor, batch_size=4)


def _fill_store(store: ECRStore, data) -> None:
    store.add(ECRRecord(d, r, s, f"<think>about {r}</think> Answer: {r}", r, "test", "0")
              for d, r, s in ecr_keys(data))


def test_end_to_end_v2_no_ecr(tte_model, root, tmp_path):
    out = tmp_path / "out"
    tasks = [get_task(name) for name in V2_TASKS]
    scores = run_tasks(tasks, _encoder(tte_model), out, "fp-a", data_root=root, ecr_mode="none", model_name="tiny")
    assert set(scores) == set(V2_TASKS)
    for spec in tasks:
        folder = out / "mmeb_v2" / spec.modality
        score = json.loads((folder / f"{spec.name}_score.json").read_text())
        assert list(score) == score_keys()
        assert 0.0 <= score[spec.headline] <= 1.0
        preds = [json.loads(line) for line in (folder / f"{spec.name}_pred.jsonl").read_text().splitlines()]
        assert len(preds) == score["num_pred"] == score["num_data"]
        assert set(preds[0]) == {"row_id", "prediction", "label", "rel_scores"}
    vidoc = [json.loads(x) for x in (out / "mmeb_v2/visdoc" / f"{VIDOC}_pred.jsonl").read_text().splitlines()]
    assert vidoc[0]["label"] == ["p0", "p1"] and vidoc[0]["rel_scores"] == [2.0, 1.0]
    assert sorted(vidoc[0]["prediction"]) == ["p0", "p1", "p2", "p3"]  # global: the whole corpus is ranked
    board = json.loads((out / "mmeb_v2" / "tiny.json").read_text())
    assert set(board) == {"metadata", "metrics"} and set(board["metrics"]) == {"image", "video", "visdoc"}
    assert set(board["metrics"]["video"]) == {"MSR-VTT", "NExTQA"}
    table = (out / "mmeb_v2" / "summary.md").read_text()
    for row in ("| I-RET | 1 |", "| V-RET | 1 |", "| V-QA | 1 |", "| VD-ViDoRe-V2 | 1 |", "| **Overall** | 4 |"):
        assert row in table
    with Image.open(out / "mmeb_v2" / "categories.png") as chart:
        assert chart.size == (900, 420) and len(chart.getcolors(100000)) > 3


def test_ecr_from_store_and_missing_records(tte_model, root, tmp_path):
    spec = get_task("NExTQA")
    store = ECRStore(tmp_path / "ecr")
    data = load_task(spec, root)
    with pytest.raises(MissingECRError, match=r"task NExTQA: 6 of 6 ECR records are missing"):
        attach_ecr(data, store, "full")
    _fill_store(store, data)
    attach_ecr(data, store, "full")
    assert data.queries[1].row["ecr"] == "<think>about 1</think> Answer: 1"
    assert data.corpus["red"]["ecr"].endswith("Answer: red")
    encoder = _encoder(tte_model, "full")
    with_ecr = run_tasks([spec], encoder, tmp_path / "full", "fp-full", data_root=root, ecr_store=store)
    base = run_tasks([spec], _encoder(tte_model), tmp_path / "none", "fp-none", data_root=root, ecr_mode="none")
    assert encoder.num_encoded == 2 + 4
    assert list(with_ecr["NExTQA"]) == list(base["NExTQA"]) == score_keys()
    # the ECR reaches the embedder: same rows with and without ECR embed differently
    rows = [data.queries[0].row, {k: v for k, v in data.queries[0].row.items() if k != "ecr"}]
    emb = encoder.encode(rows, "query")
    assert (emb[0] - emb[1]).abs().max() > 1e-4


def test_resume_after_interruption_and_cache_reuse(tte_model, root, tmp_path):
    broken = write_all(tmp_path / "broken")
    (broken / "frames" / "vid3" / "0004.png").unlink()
    for frame in (broken / "frames" / "vid1").iterdir():
        frame.unlink()
    tasks = select_tasks(["MSCOCO_t2i", "MSR-VTT"])
    out, cache = tmp_path / "out", tmp_path / "cache"
    encoder = _encoder(tte_model)
    with pytest.raises(FileNotFoundError, match="task MSR-VTT row 1"):
        run_tasks(tasks, encoder, out, "fp-a", cache_dir=cache, data_root=broken, ecr_mode="none")
    done = out / "mmeb_v2" / "image" / "MSCOCO_t2i_score.json"
    stamp = done.stat().st_mtime_ns
    first = encoder.num_encoded
    assert first == 3 + 4  # MSCOCO_t2i: 3 queries + 4 deduplicated candidates
    resumed = _encoder(tte_model)
    scores = run_tasks(tasks, resumed, out, "fp-a", cache_dir=cache, data_root=root, ecr_mode="none")
    assert done.stat().st_mtime_ns == stamp and set(scores) == {"MSCOCO_t2i", "MSR-VTT"}
    assert resumed.num_encoded == 3 + 3  # only MSR-VTT was embedded
    # a fresh output folder with the same cache embeds nothing (MSR-VTT was embedded from `root`, and media paths
    # are part of the cache key); another model gets its own cache
    again = _encoder(tte_model)
    rerun = run_tasks(tasks[1:], again, tmp_path / "out2", "fp-a", cache_dir=cache, data_root=root, ecr_mode="none")
    assert again.num_encoded == 0 and rerun["MSR-VTT"] == scores["MSR-VTT"]
    other = _encoder(tte_model)
    run_tasks(tasks[:1], other, tmp_path / "out3", "fp-b", cache_dir=cache, data_root=root, ecr_mode="none")
    assert other.num_encoded == 7 and sorted(p.name for p in cache.iterdir()) == ["fp-a", "fp-b"]


def test_fingerprints_and_sharded_fill(tte_model, root, tmp_path):
    assert model_fingerprint(tte_model, ecr_mode="full") != model_fingerprint(tte_model, ecr_mode="none")
    assert model_fingerprint(tte_model, ecr_mode="full") == model_fingerprint(tte_model, ecr_mode="full")
    data = load_task(get_task("ImageNet-1K", "mmeb_v1"), root)
    items = {item_key(name, row): row for name, row in data.corpus.items()}
    encoder = _encoder(tte_model)
    cache = EmbeddingCache(tmp_path / "shards")
    encoder.fill(cache, items, "target", rank=0, world=2)
    assert len(cache) == 2
    encoder.fill(EmbeddingCache(tmp_path / "shards"), items, "target", rank=1, world=2)
    cache.reload()
    assert len(cache) == 3 and not cache.missing(items)
    whole = encoder.encode(list(items.values()), "target")
    assert (cache.stack(list(items)) - whole).abs().max() < 1e-5


def test_cli_v1_and_bad_task(tte_model, root, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "eval.run_mmeb", "--model", str(tte_model), "--benchmark", "v1",
               "--tasks", "ImageNet-1K", "--data-root", str(root), "--ecr-mode", "none", "--out", str(tmp_path / "o")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ImageNet-1K" in result.stdout and "hit@1" in result.stdout
    assert (tmp_path / "o" / "mmeb_v1" / "image" / "ImageNet-1K_score.json").is_file()
    assert (tmp_path / "o" / "mmeb_v1" / f"{tte_model.name}.json").is_file()
    bad = command[:8] + ["ImageNet-2K"] + command[9:]
    result = subprocess.run(bad, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "'ImageNet-2K' is not in the mmeb_v1 registry" in result.stderr


def test_missing_ecr_is_generated_by_a_reasoner_then_reused(tiny_qwen2_vl, tte_model, root, tmp_path):
    from eval.run_mmeb import main

    store_dir, out = tmp_path / "ecr", tmp_path / "out"
    argv = ["--model", str(tte_model), "--tasks", "NExTQA", "--data-root", str(root), "--ecr-store", str(store_dir),
            "--reasoner", tiny_qwen2_vl, "--reasoner-max-new-tokens", "6", "--out", str(out)]
    scores = main(argv)
    assert list(scores["NExTQA"]) == score_keys()
    store = ECRStore(store_dir)
    data = load_task(get_task("NExTQA"), root)
    assert store.missing(ecr_keys(data)) == [] and len(store) == len(ecr_keys(data))
    assert {record.reasoner for record in store} == {tiny_qwen2_vl}
    lines = (store_dir / "eval-rank0.jsonl").read_text().splitlines()
    # score again with a reasoner that cannot load: the store is complete, so nothing is generated
    (out / "mmeb_v2" / "video" / "NExTQA_score.json").unlink()
    main([a if a != tiny_qwen2_vl else str(tmp_path / "no-such-reasoner") for a in argv])
    assert (store_dir / "eval-rank0.jsonl").read_text().splitlines() == lines
