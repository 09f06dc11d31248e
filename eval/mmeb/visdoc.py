"""MMEB-V2 visual-document tasks (24; BEIR layout), as the reference's `vidore_dataset.py` and `visrag_dataset.py`
read them: configs `queries` (`query-id`, `query`), `corpus` (`corpus-id`, `image`) and `qrels` (`query-id`,
`corpus-id`, `score`) of one repo (`spec.hub`), all in the same split.

* qrels (`load_qrels_mapping` of the reference): a pair is relevant only when `score > 0`; a duplicate
  `(query, document)` pair keeps the maximum score. A NaN score is an error (the reference would drop it silently).
* Every query needs a positive (the reference raises on a query without one); its gold is the list of positive
  corpus-ids, their scores as graded relevance.
* The pool (global ranking) is every query's positives in query order, then the rest of the corpus in corpus order;
  the first corpus row of a corpus-id wins. All query languages are kept (the leaderboard's `_multilingual`
  ViDoRe-V2 entries).
* Query: `spec.instruction` + the query text; candidate: the page image + `spec.target_instruction`.

Page images are read undecoded and written once each to `<cache_dir>/visdoc-pages/<sha256 of the bytes>.<format>`,
so no page stays decoded in memory and a changed page never reuses a stale file.
"""

from __future__ import annotations

import math
from pathlib import Path

from eval.data import TaskData, TaskDataError
from eval.mmeb import columns
from eval.mmeb.source import DataSource
from eval.tasks import TaskSpec
from train import pages

PAGES = "visdoc-pages"
SUFFIXES = pages.SUFFIXES


def _id(record: dict, column: str, task: str, where: str) -> str:
    value = record.get(column)
    if value is None or isinstance(value, float) or isinstance(value, (list, dict)):
        raise TaskDataError(f"task {task} {where}: column {column!r} has no usable id ({value!r:.80}; columns "
                            f"{sorted(record)})")
    return str(value)


def qrels_mapping(spec: TaskSpec, qrels) -> dict[str, dict[str, float]]:
    """query-id -> {corpus-id: score} of the positive pairs (score > 0; the maximum of duplicate pairs), in qrels
    order."""
    mapping: dict[str, dict[str, float]] = {}
    for j, rel in enumerate(qrels):
        where = f"qrels row {j}"
        qid, cid = _id(rel, "query-id", spec.name, where), _id(rel, "corpus-id", spec.name, where)
        score = rel.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            raise TaskDataError(f"task {spec.name} {where} (query-id {qid!r}, corpus-id {cid!r}): score {score!r} is "
                                f"not a number")
        if score > 0:
            docs = mapping.setdefault(qid, {})
            docs[cid] = max(docs.get(cid, score), score)
    return mapping


def page_file(image: dict, folder: Path, where: str) -> Path:
    """The content-addressed file of an undecoded `datasets.Image` cell (`{"bytes", "path"}`), written if absent
    (`train.pages.page_file`; its errors as `TaskDataError`)."""
    try:
        return pages.page_file(image, folder, where)
    except ValueError as error:
        raise TaskDataError(str(error)) from error


def corpus_rows(spec: TaskSpec, corpus, folder: Path) -> dict[str, dict]:
    """corpus-id -> candidate row (the page file), first row of an id winning, in corpus order."""
    from datasets import Image

    columns.require(corpus.column_names, ["corpus-id", "image"], spec.name, "of the corpus")
    corpus = corpus.select_columns(["corpus-id", "image"]).cast_column("image", Image(decode=False))
    rows: dict[str, dict] = {}
    for j, record in enumerate(corpus):
        cid = _id(record, "corpus-id", spec.name, f"corpus row {j}")
        if cid not in rows:
            image = page_file(record["image"], folder, f"task {spec.name} corpus row {j} (corpus-id {cid!r})")
            rows[cid] = {"image": image, "instruction": spec.target_instruction}
    return rows


def read_task(spec: TaskSpec, queries, corpus, qrels, folder: Path) -> TaskData:
    """Queries with their graded positives and the global pool (positives in query order, then the corpus)."""
    pages, mapping, data = corpus_rows(spec, corpus, folder), qrels_mapping(spec, qrels), TaskData(spec)
    for index, record in enumerate(queries):
        qid = _id(record, "query-id", spec.name, f"queries row {index}")
        if qid not in mapping:
            raise TaskDataError(f"task {spec.name} query-id {qid!r} (queries row {index}): no qrels entry with "
                                f"score > 0")
        missing = [cid for cid in mapping[qid] if cid not in pages]
        if missing:
            raise TaskDataError(f"task {spec.name} query-id {qid!r}: positive corpus-id(s) {missing[:3]} are not in "
                                f"the corpus")
        for cid in mapping[qid]:
            data.add_candidate(cid, pages[cid])
        text = columns.text(record, "query", spec.name, index)
        data.add_query(qid, {"text": text, "instruction": spec.instruction}, mapping[qid], None)
    for cid, row in pages.items():
        data.add_candidate(cid, row)
    return data.check()


def load(spec: TaskSpec, source: DataSource, num_frames: int = 8) -> TaskData:
    """Load a visual-document task from `source`; pages go to `source.cache_dir / "visdoc-pages"`."""
    repo, _, split = spec.hub
    queries, corpus, qrels = (source.table(spec.name, repo, part, split) for part in ("queries", "corpus", "qrels"))
    return read_task(spec, queries, corpus, qrels, Path(source.cache_dir) / PAGES)
