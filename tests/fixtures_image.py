"""Tiny MMEB image-task fixtures (MMEB-V2 `ziyjiang/MMEB_Test_Instruct` and MMEB-V1 `TIGER-Lab/MMEB-eval`) in the
published layouts, with their images in the MMEB-V2 tree (`<root>/mmeb/image-tasks/`) and, for the hub layout, in
the archives users download (`image-tasks/mmeb_v1.tar.gz` of `TIGER-Lab/MMEB-V2`, `images.zip` of
`TIGER-Lab/MMEB-eval`).

`write(task, layout, root)` returns the `DataSource` keyword arguments. For layout `"hub"` the hub cache is `root`
itself (returned as `hub_cache`). Several tasks may be written into one root (each
call rewrites the repo with every task written there so far); in the hub layout write them all before the first
load, as the media archives are unpacked once per `cache_dir`.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

from eval.tasks import get_task
from tests.published import hub_snapshot_dir, image, pack_media, source_kwargs, write_annotations

REPOS = {"mmeb_v2": "ziyjiang/MMEB_Test_Instruct", "mmeb_v1": "TIGER-Lab/MMEB-eval"}
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "magenta")
V2_INSTRUCTIONS = {  # (qry_inst, tgt_inst) in the style of the published data
    "image_cls": ("<|image_1|>\nRepresent the given image for classification: ", "Represent the class label: "),
    "image_qa": ("<|image_1|>\n Represent the given image with the following question: ", "Represent the answer: "),
    "image_i2t": ("<|image_1|>\nFind an image caption describing the given everyday image.", "Represent: "),
    "image_t2i": ("Find me an everyday image that matches the given caption: ", "<|image_1|>\nRepresent the image."),
    "image_i2i_vg": ("<|image_1|>\nSelect the portion of the image that follows the language expressions: ",
                     "<|image_1|>\nRepresent the given cropped image of the object \n"),
}
CAPTIONED = ("WebQA", "EDIS", "RefCOCO-Matching")  # tasks whose targets carry a caption as well as an image


def default_rows(task: str, benchmark: str = "mmeb_v2", count: int = 3) -> list[dict]:
    """`count` rows of `task` in the column layout of `benchmark`, gold first, 3 candidates each."""
    parser = get_task(task, benchmark).parser
    image_targets = parser in ("image_t2i", "image_i2i_vg")
    rows = []
    for i in range(count):
        qry_path = "" if parser == "image_t2i" else f"{task}/query_{i}.jpg"
        order = [i] + [(i + k) % (count + 1) for k in (1, 2)]
        captions = [f"{task} object {j}" if task in CAPTIONED else "" for j in order]
        paths = [f"{task}/target_{j}.jpg" for j in order] if image_targets else [""] * 3
        texts = captions if image_targets else [f"{task} label {j}" for j in order]
        if benchmark == "mmeb_v1":
            if image_targets:
                texts = [f"<|image_1|> Represent the given image. {c}".strip() for c in captions]
            qry = f"{task} query {i}" if parser == "image_t2i" else f"<|image_1|> Represent the image. {task} {i}"
            rows.append({"qry_text": qry, "qry_img_path": qry_path, "tgt_text": texts, "tgt_img_path": paths})
        else:
            qry_inst, tgt_inst = V2_INSTRUCTIONS[parser]
            rows.append({"qry_inst": qry_inst, "qry_text": f"{task} query {i}", "qry_img_path": qry_path,
                         "tgt_inst": tgt_inst, "tgt_text": texts, "tgt_img_path": paths})
    return rows


def _images(rows: list[dict], folder: Path) -> None:
    for row in rows:
        for path in [row.get("qry_img_path")] + list(row.get("tgt_img_path") or []):
            if isinstance(path, str) and path and not (folder / path).is_file():
                colour = COLOURS[int(hashlib.md5(path.encode()).hexdigest(), 16) % len(COLOURS)]
                image(folder / path, colour)


def _zip_tree(folder: Path) -> bytes:
    """`images.zip` as MMEB-eval ships it: the task folders at the top (`unzip images.zip -d <image_dir>`)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def write_rows(task: str, layout: str, root, rows: list[dict], benchmark: str = "mmeb_v2", features=None) -> dict:
    """Write `rows` as `task`'s config (split `test`) of the benchmark's repo, with an image file for every path
    they name; returns the `DataSource` keyword arguments."""
    root = Path(root)
    media = root / "mmeb" / "image-tasks"
    _images(rows, media)
    ledger = root / f".fixtures_image_{benchmark}.json"
    written = json.loads(ledger.read_text(encoding="utf-8")) if ledger.is_file() else {}
    written[task] = rows
    ledger.write_text(json.dumps(written), encoding="utf-8")
    configs = {name: {"test": task_rows} for name, task_rows in written.items()}
    repo = REPOS[benchmark]
    write_annotations(layout, root if layout == "hub" else root / "data", repo, configs, features=features)
    if layout == "hub":
        if benchmark == "mmeb_v1":
            (hub_snapshot_dir(root, repo) / "images.zip").write_bytes(_zip_tree(media))
        else:
            pack_media(root / "mmeb", root)
    return source_kwargs(layout, root)


def write(task: str, layout: str, root, benchmark: str = "mmeb_v2") -> dict:
    """A 3-row fixture of any MMEB-V2 image or MMEB-V1 task in `layout`; returns the `DataSource` kwargs."""
    return write_rows(task, layout, root, default_rows(task, benchmark), benchmark)
