"""Tiny fixtures of every source of the VLM2Vec-V2 training mixture (`train/recipes/mixture_mmeb_v2.yaml`) in the
layouts users download them in (`tests.published`), under one `data_root` laid out as the reference's
`download_data.sh` leaves `data/vlm2vec_train`:

* `MMEB-train/`: the `TIGER-Lab/MMEB-train` clone (snapshot layout: README `configs:`, sharded parquet per subset
  and split `original` / `diverse_instruction`) with its unzipped `images/<subset>/...`;
* `vidore/colpali_train_set` and `openbmb/VisRAG-Ret-Train-In-domain-data` in the hub cache `hub/` (or, with
  `visdoc_layout="save_to_disk"`, as `save_to_disk` folders under `data_root`), pages in the parquet `image` column;
* `video/`: the `ShareGPTVideo/train_video_and_instruction` clone, annotations in
  `video_instruction/train/sft/*.jsonl`, unpacked frame folders `train_300k/<video>/frame_<i>.jpg` (10 frames, not
  zero-padded; one QA row names a video without frames).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from datasets import Features, Image, Value
from PIL import Image as PILImage

from tests.published import frames, image, write_annotations

ROWS = 3  # per MMEB-train subset and split
MMEB_SUBSETS = ("ImageNet_1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "OK-VQA", "A-OKVQA", "DocVQA",
                "InfographicsVQA", "ChartQA", "Visual7W", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t",
                "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA", "MSCOCO")
COLOURS = ("red", "green", "blue", "yellow", "white", "black")
VIDEO_FRAMES = 10
VIDEOS = ("v_alpha", "v_beta", "v_gamma")
VISDOC_FEATURES = {
    "vidore/colpali_train_set": Features({"image": Image(), "image_filename": Value("string"),
                                          "query": Value("string"), "answer": Value("string"),
                                          "source": Value("string")}),
    "openbmb/VisRAG-Ret-Train-In-domain-data": Features({"query": Value("string"), "image": Image(),
                                                         "source": Value("string")}),
}


def page(colour: str, size=(24, 32)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def mmeb_rows(subset: str, split: str) -> list[dict]:
    """Image query -> text target rows (every subset alike; one hard negative on the first row)."""
    rows = []
    for i in range(ROWS):
        rows.append({"qry": f"<|image_1|> {split} {subset} query {i}", "qry_image_path": f"images/{subset}/{i}.png",
                     "pos_text": f"{subset} answer {i}", "pos_image_path": "",
                     "neg_text": f"{subset} wrong {i}" if i == 0 else "", "neg_image_path": ""})
    return rows


def write_mmeb_train(data_root: Path) -> Path:
    clone = data_root / "MMEB-train"
    configs = {subset: {split: mmeb_rows(subset, split) for split in ("original", "diverse_instruction")}
               for subset in MMEB_SUBSETS}
    write_annotations("snapshot", data_root, "MMEB-train", configs)
    for subset in MMEB_SUBSETS:
        for i in range(ROWS):
            image(clone / "images" / subset / f"{i}.png", COLOURS[i % len(COLOURS)])
    return clone


def visdoc_rows(repo: str) -> list[dict]:
    rows = []
    for i, colour in enumerate(COLOURS[:4]):
        row = {"query": f"{repo.split('/')[-1]} question {i}", "image": {"bytes": page(colour), "path": None},
               "source": "Textbooks"}
        if repo.startswith("vidore"):
            row.update(image_filename=f"page_{i}.png", answer=f"answer {i}")
        rows.append(row)
    rows[3]["image"] = {"bytes": page(COLOURS[0]), "path": None}  # a page shared with row 0: stored once
    return rows


def write_visdoc(data_root: Path, hub_root: Path, layout: str = "hub") -> None:
    for repo, features in VISDOC_FEATURES.items():
        root = hub_root if layout == "hub" else data_root
        write_annotations(layout, root, repo, {None: {"train": visdoc_rows(repo)}}, features=features)


def write_llavahound(data_root: Path) -> Path:
    clone = data_root / "video"
    for index, video in enumerate(VIDEOS):
        frames(clone / "train_300k" / video, VIDEO_FRAMES, COLOURS[index])
    sft = clone / "video_instruction" / "train" / "sft"
    sft.mkdir(parents=True, exist_ok=True)
    captions = [{"id": f"cap_{i}", "video": video, "conversations": [
        {"from": "human", "value": "<video>\nDescribe the video in detail."},
        {"from": "gpt", "value": f"A {COLOURS[i]} scene, caption {i}."}]} for i, video in enumerate(VIDEOS)]
    qa = [{"id": f"qa_{i}", "video": video, "conversations": [
        {"from": "human", "value": f"<video>\nWhat colour is video {i}?"},
        {"from": "gpt", "value": COLOURS[i]}]} for i, video in enumerate((*VIDEOS, "v_missing"))]
    for name, rows in (("video_caption_300k.jsonl", captions), ("video_240k_caption_15k.jsonl", qa)):
        (sft / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return clone


def write_mixture(root: Path, visdoc_layout: str = "hub") -> dict:
    """Write every source under `root`; returns `{"data_root", "hub_cache", "cache_dir"}` for the loaders."""
    root = Path(root)
    data_root, hub_root = root / "vlm2vec_train", root / "hub"
    write_mmeb_train(data_root)
    write_visdoc(data_root, hub_root, visdoc_layout)
    write_llavahound(data_root)
    return {"data_root": str(data_root), "hub_cache": str(hub_root), "cache_dir": str(root / "cache")}
