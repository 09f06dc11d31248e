"""MMEB-V1 tasks (36) as the original evaluator reads them (branch `v1` of TIGER-AI-Lab/VLM2Vec: `eval.py`,
`src/dataset.py` `EvalDataset`): `TIGER-Lab/MMEB-eval`, config = task name, split `test`.

Columns: `qry_text` (the instruction and the `<|image_1|>` placeholder already inside), `qry_img_path`, `tgt_text`
(list) and `tgt_img_path` (list, `""` for a text-only candidate). A candidate is its `(text, image path)` pair: equal
pairs are encoded once (the pool's name is the pair, so `("cat", "")` and `("cat", "a.jpg")` stay apart) and the
gold is element 0 of the row's lists, scored over the row's own candidates. The placeholder is removed (the V1
evaluator swaps it for the backbone's image token; TTE's chat template places the image itself). Image paths are
relative to the folder `images.zip` was unzipped into (the V1 `--image_dir`), the same tree as the MMEB-V2 clone's
`image-tasks/` (see `DataSource.mmeb_v1_images`).
"""

from __future__ import annotations

import json
from pathlib import Path

from eval.data import TaskData, TaskDataError
from eval.mmeb import columns
from eval.mmeb.image import resolve_image
from eval.mmeb.source import DataSource
from eval.tasks import TaskSpec

PLACEHOLDER = "<|image_1|>"  # Phi-3-V's image token, as written in the V1 data


def pair_name(text: str, path: str) -> str:
    """The pool name of a `(text, image path)` pair, unambiguous for any text and path."""
    return json.dumps([text, path], ensure_ascii=False)


def _row(text: str, path: str, root: Path, where: str) -> dict:
    row = {"text": text.replace(PLACEHOLDER, ""), "instruction": ""}
    if path:
        row["image"] = resolve_image(root, path, where)
    return row


def read_rows(spec: TaskSpec, table, root: Path) -> TaskData:
    """Queries and the task's pool of unique `(text, image)` candidates."""
    data, task = TaskData(spec), spec.name
    for index, record in enumerate(table):
        where = f"task {task} row {index}"
        query = _row(columns.text(record, "qry_text", task, index), columns.text(record, "qry_img_path", task, index),
                     root, f"{where} column 'qry_img_path'")
        texts = columns.text_list(record, "tgt_text", task, index)
        paths = columns.text_list(record, "tgt_img_path", task, index)
        if len(paths) != len(texts):
            raise TaskDataError(f"{where}: tgt_text has {len(texts)} items, tgt_img_path {len(paths)}")
        names = [data.add_candidate(pair_name(text, path), _row(text, path, root, f"{where} tgt_img_path item {j}"))
                 for j, (text, path) in enumerate(zip(texts, paths, strict=True))]
        data.add_query(index, query, {names[0]: 1.0}, names)
    return data.check()


def load(spec: TaskSpec, source: DataSource, num_frames: int = 8) -> TaskData:
    """Load an MMEB-V1 task from `source` (images from `source.mmeb_v1_images`)."""
    repo, config, split = spec.hub
    table = source.table(spec.name, repo, config, split)
    return read_rows(spec, table, source.mmeb_v1_images(spec.name))
