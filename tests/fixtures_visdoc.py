"""Tiny MMEB-V2 visual-document fixtures (BEIR `queries` / `corpus` / `qrels` configs of the task's hub repo) in
the published layouts, the page images inside the corpus `image` column (a `datasets.Image` feature) as on the hub.

`write(task, layout, root)` returns the `DataSource` keyword arguments. For layout `"hub"` the hub cache is `root`
itself (returned as `hub_cache`).
"""

from __future__ import annotations

import io
from pathlib import Path

from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from eval.tasks import get_task
from tests.published import source_kwargs, write_annotations

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
CORPUS_FEATURES = Features({"corpus-id": Value("string"), "image": Image()})


def page(colour: str, size=(24, 32), fmt: str = "PNG") -> bytes:
    """The encoded bytes of a solid-colour page."""
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def corpus_ids(task: str, count: int = 4) -> list[str]:
    """Corpus ids in the style of the task's source: VisRAG names pages by file name, ViDoRe by number."""
    if task.startswith("VisRAG"):
        return [f"{task.lower()}_page_{i}.jpg" for i in range(count)]
    return [str(100 + i) for i in range(count)]


def default_tables(task: str) -> dict:
    """3 queries, 4 pages, graded qrels (one score-0 row, one duplicate pair) for `task`."""
    ids = corpus_ids(task)
    queries = [{"query-id": f"q{i}", "query": f"{task} question {i}"} for i in range(3)]
    if "_v2" in task:  # ViDoRe-V2 queries carry a language
        for row, language in zip(queries, ("english", "french", "spanish"), strict=True):
            row["language"] = language
    fmt = "JPEG" if task.startswith("VisRAG") else "PNG"
    corpus = [(cid, page(COLOURS[i], fmt=fmt)) for i, cid in enumerate(ids)]
    qrels = [("q0", ids[1], 1), ("q1", ids[2], 2), ("q1", ids[0], 1), ("q2", ids[3], 1), ("q2", ids[0], 0),
             ("q1", ids[2], 1)]
    return {"queries": queries, "corpus": corpus, "qrels": qrels}


def write_tables(task: str, layout: str, root, queries: list[dict], corpus: list[tuple[str, bytes]],
                 qrels: list[tuple], qrels_features: Features | None = None) -> dict:
    """Write `task`'s repo from rows: `corpus` as `(corpus-id, image bytes)`, `qrels` as `(query-id, corpus-id,
    score)`; returns the `DataSource` keyword arguments."""
    root = Path(root)
    repo, _, split = get_task(task).hub
    corpus_table = Dataset.from_dict({"corpus-id": [cid for cid, _ in corpus],
                                      "image": [{"bytes": data, "path": None} for _, data in corpus]},
                                     features=CORPUS_FEATURES)
    qrels_table = Dataset.from_dict({"query-id": [q for q, _, _ in qrels], "corpus-id": [c for _, c, _ in qrels],
                                     "score": [s for _, _, s in qrels]}, features=qrels_features)
    configs = {"queries": {split: Dataset.from_list(queries)}, "corpus": {split: corpus_table},
               "qrels": {split: qrels_table}}
    write_annotations(layout, root if layout == "hub" else root / "data", repo, configs)
    return source_kwargs(layout, root)


def write(task: str, layout: str, root) -> dict:
    """A small fixture of any visual-document task in `layout`; returns the `DataSource` keyword arguments."""
    return write_tables(task, layout, root, **default_tables(task))
