"""MMEB-V2 image tasks (36, shared with MMEB-V1's task list): `ziyjiang/MMEB_Test_Instruct`, config = task name,
split `test`, as the reference's image parsers (`src/data/eval_dataset/image_*.py`) read them.

Columns: `qry_inst`, `qry_text`, `qry_img_path`, `tgt_inst`, `tgt_text` (list), `tgt_img_path` (list); the gold is
element 0 of the target lists and a row's candidates are its own lists, in order (every task is `local`). Per
parser (`spec.parser`):

| parser | query | candidates | candidate name |
|---|---|---|---|
| image_cls, image_i2t | image + `qry_inst` (placeholder removed) + `qry_text` | the `tgt_text` item | the text |
| image_qa | as cls, the instruction stripped | as cls | the text |
| image_t2i | text only: `qry_inst` + `qry_text` | image + `tgt_inst` (+ caption if `tgt_text[0]` not blank) | path |
| image_i2i_vg | as qa | as t2i | `"path:caption"` (`"` stripped) |

`tgt_inst` is read only by t2i and vg. Within the instruction, every `" \\n"` becomes `"\\n"` (except t2i queries,
which the reference builds by hand). Media tokens, joining spaces and trailing newlines are not reproduced: the
TTE processor builds its prompt through the chat template. Image paths are relative to the MMEB-V2 tree's
`image-tasks/` (`spec.media`), or to its `MMEB/` sub-folder (an older YAML's `image_root`). The synthetic demo tasks
(`spec.media == ""`) use the same code with paths relative to the data root.
"""

from __future__ import annotations

from pathlib import Path

from eval.data import TaskData, TaskDataError
from eval.mmeb import columns
from eval.mmeb.source import DataSource
from eval.tasks import TaskSpec

PLACEHOLDER = "<|image_1|>"
PARSERS = ("image_cls", "image_qa", "image_i2t", "image_t2i", "image_i2i_vg")
TEXT_TARGETS = ("image_cls", "image_qa", "image_i2t")  # candidates are tgt_text items; tgt_inst is ignored
FALLBACK_FOLDERS = ("MMEB",)  # image-tasks/MMEB/ before download_data.sh moved its contents up


def candidate_name(parser: str, text: str, path: str) -> str:
    """The reference's name of a candidate (which candidates share one embedding): the text for cls/qa/i2t, the
    image path for t2i, `"path:caption"` with `"` stripped from the caption's ends for i2i_vg (`"path:"` when the
    caption is blank, so two targets in one image stay two candidates)."""
    if parser in TEXT_TARGETS:
        return text
    if parser == "image_t2i":
        return path
    if parser == "image_i2i_vg":
        return f"{path}:{text.strip(chr(34))}"
    raise ValueError(f"unknown image parser {parser!r} (one of {list(PARSERS)})")


def resolve_image(root: Path, path: str, where: str) -> Path:
    """`root/path`, or `root/MMEB/path`; a `FileNotFoundError` naming `where` and both places otherwise."""
    if not path:
        raise TaskDataError(f"{where}: empty image path")
    tried = [root / path] + [root / folder / path for folder in FALLBACK_FOLDERS]
    for full in tried:
        if full.is_file():
            return full
    raise FileNotFoundError(f"{where}: image not found: {' or '.join(str(p) for p in tried)}")


def _instruction(record: dict, column: str, spec: TaskSpec, index: int) -> str:
    """The instruction column without its `<|image_1|>` placeholder; `""` when the column is absent (as the newest
    reference), an error when present but not a string."""
    if column not in record:
        return ""
    return columns.text(record, column, spec.name, index).replace(PLACEHOLDER, "")


def build_query(spec: TaskSpec, record: dict, index: int, root: Path) -> dict:
    """The processor row of a query."""
    parser, where = spec.parser, f"task {spec.name} row {index}"
    instruction = _instruction(record, "qry_inst", spec, index)
    text = columns.text(record, "qry_text", spec.name, index)
    if parser == "image_t2i":  # text only; the reference does not edit newlines here
        return {"text": text, "instruction": instruction}
    if parser in ("image_qa", "image_i2i_vg"):
        instruction = instruction.strip()
    row = {"text": text.replace(" \n", "\n"), "instruction": instruction.replace(" \n", "\n")}
    path = columns.text(record, "qry_img_path", spec.name, index)
    if path:
        row["image"] = resolve_image(root, path, f"{where} column 'qry_img_path'")
    return row


def build_candidates(spec: TaskSpec, record: dict, index: int, root: Path) -> list[tuple[str, dict]]:
    """`(name, processor row)` of a row's candidates, in order, duplicates kept."""
    parser, task = spec.parser, spec.name
    texts = columns.text_list(record, "tgt_text", task, index)
    if parser in TEXT_TARGETS:
        return [(candidate_name(parser, text, ""), {"text": text}) for text in texts]
    paths = columns.text_list(record, "tgt_img_path", task, index)
    if len(paths) != len(texts):
        raise TaskDataError(f"task {task} row {index}: tgt_text has {len(texts)} items, tgt_img_path {len(paths)}")
    instruction = _instruction(record, "tgt_inst", spec, index).replace(" \n", "\n")
    with_caption = bool(texts[0].strip())  # WebQA, EDIS (t2i), RefCOCO-Matching (vg): the caption is encoded too
    out = []
    for j, (text, path) in enumerate(zip(texts, paths, strict=True)):
        image = resolve_image(root, path, f"task {task} row {index} column 'tgt_img_path' item {j}")
        row = {"image": image, "instruction": instruction, "text": text.replace(" \n", "\n") if with_caption else ""}
        out.append((candidate_name(parser, text, path), row))
    return out


def read_rows(spec: TaskSpec, table, root: Path) -> TaskData:
    """Queries and the per-task candidate pool of `table` (first row of a candidate name wins)."""
    if spec.parser not in PARSERS:
        raise TaskDataError(f"task {spec.name}: unknown image parser {spec.parser!r} (one of {list(PARSERS)})")
    data = TaskData(spec)
    for index, record in enumerate(table):
        query = build_query(spec, record, index, root)
        names = [data.add_candidate(name, row) for name, row in build_candidates(spec, record, index, root)]
        data.add_query(index, query, {names[0]: 1.0}, names)
    return data.check()


def load(spec: TaskSpec, source: DataSource, num_frames: int = 8) -> TaskData:
    """Load an MMEB-V2 image task (or a synthetic demo task) from `source`."""
    repo, config, split = spec.hub
    table = source.table(spec.name, repo, config, split)
    root = source.media_dir(spec.name, spec.media or "")
    return read_rows(spec, table, root)
