"""Evaluate a TTE model on MMEB tasks: load, attach ECR, embed (cached, deduplicated, sharded), rank, score."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from eval.cache import EmbeddingCache, item_key, model_fingerprint
from eval.data import TaskData
from eval.ecr import attach_ecr
from eval.encode import Encoder
from eval.metrics import KS, query_metrics, rank_candidates, task_scores
from eval.mmeb import DataSource, load_task
from eval.provenance import differences, make_record, read_record
from eval.report import score_path, write_summary, write_task_outputs
from eval.tasks import TaskSpec

logger = logging.getLogger(__name__)


def rank_task(data: TaskData, query_emb: torch.Tensor, corpus_emb: torch.Tensor, pred_topk: int = 100,
              reference_ndcg: bool = False):
    """Rank each query's own candidates (local, looked up by name, duplicates kept) or the whole pool (global)
    by dot product; returns per-query metrics and prediction records."""
    names = list(data.corpus)
    index = {name: i for i, name in enumerate(names)}
    per_query, predictions = [], []
    for i, query in enumerate(data.queries):
        cands = query.candidates if query.candidates is not None else names
        rows = corpus_emb[[index[c] for c in cands]] if query.candidates is not None else corpus_emb
        ranked = rank_candidates(rows @ query_emb[i], cands)
        per_query.append(query_metrics(ranked, query.relevance, KS, reference_ndcg=reference_ndcg))
        predictions.append({"row_id": query.row_id, "prediction": ranked[:pred_topk],
                            "label": list(query.relevance), "rel_scores": list(query.relevance.values())})
    return per_query, predictions


def task_items(data: TaskData) -> dict[str, dict[str, dict]]:
    """`{"query": {cache key: row}, "target": {cache key: row}}` in query and pool order."""
    return {"query": {item_key(q.row_id, q.row): q.row for q in data.queries},
            "target": {item_key(name, row): row for name, row in data.corpus.items()}}


def embed_task(data: TaskData, encoder: Encoder, cache_root: Path, rank: int = 0, world: int = 1,
               barrier=lambda: None, sides=None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Embed a task's queries and pool through the cache; every process encodes its share, then (after
    `barrier`) rank 0 gets `(query_emb, corpus_emb)` and the others `None`."""
    sides = sides or task_items(data)
    caches = {side: EmbeddingCache(cache_root / data.spec.name / side) for side in sides}
    for side, items in sides.items():
        label = "queries" if side == "query" else "targets"
        encoder.fill(caches[side], items, side, rank, world, desc=f"{data.spec.name} {label}")
    barrier()
    if rank != 0:
        return None
    for cache in caches.values():
        cache.reload()
    return tuple(caches[side].stack(list(items)) for side, items in sides.items())


def evaluate_task(spec: TaskSpec, data: TaskData, encoder: Encoder, out_dir, cache_root: Path, rank: int = 0,
                  world: int = 1, barrier=lambda: None, pred_topk: int = 100, provenance: dict | None = None,
                  sides=None, reference_ndcg: bool = False) -> dict | None:
    """Embed, rank and score one loaded task; rank 0 writes its outputs (and `provenance`) and returns the
    scores."""
    embedded = embed_task(data, encoder, cache_root, rank, world, barrier, sides)
    if embedded is None:
        return None
    per_query, predictions = rank_task(data, *embedded, pred_topk=pred_topk, reference_ndcg=reference_ndcg)
    scores = task_scores(per_query, num_data=len(data.queries))
    write_task_outputs(out_dir, spec, scores, predictions, provenance)
    return scores


def check_run_record(out_dir, record: dict) -> None:
    """Refuse to mix results of different models or settings in one output folder."""
    path = Path(out_dir) / "run.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("fingerprint") != record["fingerprint"]:
            raise ValueError(f"{out_dir} holds results of another model or setting ({old.get('model')}, ecr_mode "
                             f"{old.get('ecr_mode')}); use another --output_dir folder")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _reuse(out_dir, spec: TaskSpec, record: dict) -> dict | None:
    """The stored scores of `spec` when they were computed from exactly these inputs, else `None` (logged)."""
    path = score_path(out_dir, spec)
    if not path.is_file():
        return None
    changed = differences(read_record(path.with_name(f"{spec.name}_provenance.json")), record)
    if changed:
        logger.warning("%s: scored before from other inputs (%s); scoring again", spec.name, ", ".join(changed))
        return None
    logger.info("%s: already scored from the same model, settings and inputs; reusing", spec.name)
    return json.loads(path.read_text(encoding="utf-8"))


def run_tasks(tasks: list[TaskSpec], encoder: Encoder, out_dir, fingerprint: str, source: DataSource | None = None,
              cache_dir=None, ecr_store=None, ecr_mode: str = "full", reasoner=None, num_frames: int = 8,
              state=None, model_name: str = "model", reference_ndcg: bool = False) -> dict[str, dict]:
    """Evaluate `tasks` in order, reusing a task's `{task}_score.json` only when its provenance (model, settings,
    inputs) matches, then write the summary for each benchmark touched. `state` is an `accelerate.PartialState`
    (or `None` for one process)."""
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    barrier = state.wait_for_everyone if state is not None else (lambda: None)
    source = source or DataSource()
    cache_root = Path(cache_dir or Path(out_dir) / "embedding_cache") / fingerprint
    settings = {"ecr_mode": ecr_mode, "num_frames": num_frames, "reference_ndcg": reference_ndcg}
    done = {}
    for number, spec in enumerate(tasks, 1):
        start = time.perf_counter()
        if rank == 0:
            logger.info("[%d/%d] %s: loading", number, len(tasks), spec.name)
        data = load_task(spec, source, num_frames).check()
        attach_ecr(data, ecr_store, ecr_mode, backend=reasoner, rank=rank, world=world, barrier=barrier)
        sides = task_items(data)
        record = make_record(spec.name, fingerprint, settings, sides, ecr_store)
        scores = _reuse(out_dir, spec, record)
        barrier()
        if scores is None:
            scores = evaluate_task(spec, data, encoder, out_dir, cache_root, rank, world, barrier,
                                   provenance=record, sides=sides, reference_ndcg=reference_ndcg)
        barrier()
        if scores is not None:
            done[spec.name] = scores
            logger.info("%s: %d queries, pool %d, %.1f s, %s %.2f", spec.name, len(data.queries), len(data.corpus),
                        time.perf_counter() - start, spec.headline, 100 * scores[spec.headline])
    if rank == 0:
        for benchmark in dict.fromkeys(spec.benchmark for spec in tasks):
            write_summary(out_dir, benchmark, model_name, {"fingerprint": fingerprint, "ecr_mode": ecr_mode})
    return done


def load_model(model_path, ecr_mode: str = "full", device=None, dtype=None, trust_remote_code: bool = False):
    """A `TTEForEmbedding` and `TTEProcessor` from a saved TTE folder (local or hub id), set to `ecr_mode`. The
    project's own classes are used; code that the folder names (`auto_map`) runs only with `trust_remote_code`."""
    from modeling_tte import TTEForEmbedding
    from processing_tte import TTEProcessor

    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = TTEForEmbedding.from_pretrained(model_path, trust_remote_code=trust_remote_code, **kwargs).eval()
    if device is not None:
        model = model.to(device)
    processor = TTEProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    processor.ecr_mode = ecr_mode
    return model, processor


def evaluate_model(model_path, tasks: list[TaskSpec], out_dir, ecr_mode: str = "full", batch_size: int = 8,
                   model_name: str | None = None, state=None, trust_remote_code: bool = False, num_workers: int = 0,
                   **kwargs) -> dict[str, dict]:
    """Load a model and `run_tasks`; `num_workers` is the `Encoder`'s (DataLoader worker processes preprocessing
    rows); `kwargs` go to `run_tasks` (`source`, `ecr_store`, `cache_dir`, ...)."""
    device = state.device if state is not None else None
    model, processor = load_model(model_path, ecr_mode, device=device, trust_remote_code=trust_remote_code)
    fingerprint = model_fingerprint(model_path, ecr_mode=ecr_mode, max_ecr_tokens=processor.max_ecr_tokens)
    if state is None or state.is_main_process:
        check_run_record(out_dir, {"model": str(model_path), "ecr_mode": ecr_mode, "fingerprint": fingerprint})
    encoder = Encoder(model, processor, batch_size=batch_size, device=device, num_workers=num_workers)
    name = model_name or Path(str(model_path).rstrip("/")).name
    return run_tasks(tasks, encoder, out_dir, fingerprint, ecr_mode=ecr_mode, state=state, model_name=name, **kwargs)
