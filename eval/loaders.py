"""Read an MMEB task, from a local directory or from the hub by name, into a `TaskData`.

Local layout (`data_root`), one entry per task name:

* MMEB-V1 / MMEB-V2 image / MMEB-V2 video: `<task>.jsonl` (or `.json`, `.parquet`), or a folder `<task>/` holding
  one such file. Columns: V1 `qry_text, qry_img_path, tgt_text[], tgt_img_path[]`; V2 image adds `qry_inst, tgt_inst`;
  V2 video uses `qry_video_path` / `tgt_video_path[]` (folders of pre-extracted frames) in place of, or beside, the
  image columns. The gold candidate is the first.
* MMEB-V2 visual documents (BEIR): a folder `<task>/` with `queries` (`query-id, query`), `corpus`
  (`corpus-id, image`) and `qrels` (`query-id, corpus-id, score`) as `.jsonl` or `.parquet` files.

Relative media paths are resolved against `media_root`, which defaults to `data_root` (and, for visual
documents, to the task folder `data_root/<task>`).
"""

from __future__ import annotations

from pathlib import Path

from eval.data import (
    EvalQuery,
    TaskData,
    TaskDataError,
    candidate_name,
    clean_text,
    read_records,
    resolve_media,
    sample_frames,
)
from eval.tasks import TaskSpec, _registry

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
BEIR_PARTS = ("queries", "corpus", "qrels")


def _find_file(folder: Path, stem: str | None) -> Path | None:
    for suffix in DATA_SUFFIXES:
        candidates = [folder / f"{stem}{suffix}"] if stem else sorted(folder.glob(f"*{suffix}"))
        for path in candidates:
            if path.is_file():
                return path
    return None


def local_records(spec: TaskSpec, data_root: Path, part: str | None = None) -> list[dict]:
    """The rows of a task (or of one BEIR `part`) under `data_root`."""
    folder = data_root / spec.name
    path = _find_file(folder, part) if folder.is_dir() else None
    if path is None and part is None:
        path = _find_file(data_root, spec.name)
    if path is None:
        what = f"'{part}' file" if part else "data file"
        raise FileNotFoundError(f"task {spec.name}: no {what} ({'/'.join(DATA_SUFFIXES)}) under {data_root}")
    return read_records(path)


def hub_records(spec: TaskSpec, part: str | None = None) -> list:
    """The rows of a task (or BEIR `part`) from the hub: `datasets.load_dataset(repo, config, split=split)`."""
    from datasets import load_dataset

    repo, config, split = spec.hub
    return load_dataset(repo, part or config, split=split)


def hub_media_root(spec: TaskSpec) -> Path:
    """Download (or find in the cache) the benchmark's media repository and return its folder."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(_registry()["media"][spec.benchmark], repo_type="dataset"))


def _media_row(spec, path, root, where: str, video: bool, num_frames: int) -> dict:
    if path in (None, ""):
        return {}
    if video:
        folder = resolve_media(path, root, where, video=True)
        return {"video": sample_frames(folder, num_frames, where)}
    return {"image": resolve_media(path, root, where)}


def _pair_columns(spec: TaskSpec, record: dict) -> tuple[str, str, bool]:
    if spec.format == "video" and ("qry_video_path" in record or "tgt_video_path" in record):
        return "qry_video_path", "tgt_video_path", True
    return "qry_img_path", "tgt_img_path", False


def _pair_row(spec: TaskSpec, data: TaskData, index: int, record: dict, root, num_frames: int) -> EvalQuery:
    where = f"task {spec.name} row {index}"
    missing = [c for c in ("qry_text", "tgt_text") if c not in record]
    if missing:
        raise TaskDataError(f"{where}: missing column(s) {missing}; an MMEB {spec.format} row needs qry_text, "
                            f"tgt_text and image/video path columns")
    qry_key, tgt_key, video = _pair_columns(spec, record)
    query = _media_row(spec, record.get(qry_key), root, f"{where} query", video, num_frames)
    query.update(text=clean_text(record.get("qry_text")),
                 instruction=clean_text(record.get("qry_inst")) or spec.instruction)
    texts = list(record.get("tgt_text") or [])
    paths = list(record.get(tgt_key) or [])
    count = max(len(texts), len(paths))
    if count == 0:
        raise TaskDataError(f"{where}: the row has no candidates (empty tgt_text and {tgt_key})")
    texts += [""] * (count - len(texts))
    paths += [None] * (count - len(paths))
    names = []
    for j, (text, path) in enumerate(zip(texts, paths, strict=True)):
        text = clean_text(text)
        cand = _media_row(spec, path, root, f"{where} candidate {j}", video, num_frames)
        if not text and not cand:
            raise TaskDataError(f"{where} candidate {j}: neither text nor media")
        cand.update(text=text, instruction=clean_text(record.get("tgt_inst")) or spec.target_instruction)
        names.append(data.add_candidate(candidate_name(text, path or None), cand))
    local = spec.eval_type == "local"
    return EvalQuery(str(index), query, {names[0]: 1.0}, list(dict.fromkeys(names)) if local else None)


def load_pairs(spec: TaskSpec, records, media_root, num_frames: int = 8) -> TaskData:
    """MMEB-V1, MMEB-V2 image and MMEB-V2 video rows (gold candidate first)."""
    data = TaskData(spec)
    for index, record in enumerate(records):
        data.queries.append(_pair_row(spec, data, index, dict(record), media_root, num_frames))
    return data


def _qrels_map(spec: TaskSpec, qrels, corpus: dict) -> dict[str, dict[str, float]]:
    mapping: dict[str, dict[str, float]] = {}
    for j, rel in enumerate(qrels):
        qid, cid = str(rel["query-id"]), str(rel["corpus-id"])
        if cid not in corpus:
            raise TaskDataError(f"task {spec.name} qrels row {j} (query-id {qid!r}): corpus-id {cid!r} is not in "
                                f"the corpus")
        mapping.setdefault(qid, {})[cid] = float(rel.get("score", 1))
    return mapping


def load_beir(spec: TaskSpec, queries, corpus, qrels, media_root) -> TaskData:
    """MMEB-V2 visual-document tasks: BEIR queries, corpus (page images) and graded qrels; ranked globally."""
    data = TaskData(spec)
    for j, doc in enumerate(corpus):
        cid = str(doc["corpus-id"])
        image = resolve_media(doc["image"], media_root, f"task {spec.name} corpus row {j} (corpus-id {cid!r})")
        data.add_candidate(cid, {"image": image, "instruction": spec.target_instruction})
    mapping = _qrels_map(spec, qrels, data.corpus)
    for query in queries:
        qid = str(query["query-id"])
        if qid not in mapping:
            raise TaskDataError(f"task {spec.name} query-id {qid!r}: the row has no candidates (no qrels entry)")
        row = {"text": clean_text(query["query"]), "instruction": spec.instruction}
        data.queries.append(EvalQuery(qid, row, mapping[qid], None))
    return data


def load_task(spec: TaskSpec, data_root=None, media_root=None, num_frames: int = 8) -> TaskData:
    """Load `spec` from `data_root` (local layout, see the module docstring) or, when `data_root` is `None`, from
    the hub by name (annotations with `datasets.load_dataset`, media with `huggingface_hub.snapshot_download`)."""
    if data_root is not None:
        data_root = Path(data_root)
        if media_root is None:
            media_root = data_root / spec.name if spec.format == "visdoc" else data_root
        read = lambda part=None: local_records(spec, data_root, part)  # noqa: E731
    else:
        if media_root is None and spec.format != "visdoc":  # hub BEIR corpora carry their page images
            media_root = hub_media_root(spec)
        read = lambda part=None: hub_records(spec, part)  # noqa: E731
    media_root = Path(media_root) if media_root is not None else None
    if spec.format == "visdoc":
        return load_beir(spec, *(read(part) for part in BEIR_PARTS), media_root)
    return load_pairs(spec, read(), media_root, num_frames)
