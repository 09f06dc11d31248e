"""Write small MMEB tasks in each of the four published formats to disk (generated images, frames, pages)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ["red", "green", "blue", "yellow"]
V2_TASKS = ["MSCOCO_t2i", "MSR-VTT", "NExTQA", "ViDoRe_esg_reports_human_labeled_v2"]
VIDOC = "ViDoRe_esg_reports_human_labeled_v2"


def _image(path: Path, colour: str, label: str = "") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (32, 32), colour)
    ImageDraw.Draw(image).text((2, 2), label, fill="white")
    image.save(path)
    return str(path)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_v1(root: Path) -> None:
    """MMEB-V1 ImageNet-1K: instruction inside qry_text, gold class first."""
    rows = []
    for i, colour in enumerate(COLOURS[:3]):
        _image(root / "images" / f"imnet_{i}.png", colour)
        labels = [colour] + [c for c in COLOURS if c != colour][:2]
        rows.append({"qry_text": "<|image_1|>\nRepresent the given image for classification",
                     "qry_img_path": f"images/imnet_{i}.png", "tgt_text": labels, "tgt_img_path": ["", "", ""]})
    _jsonl(root / "ImageNet-1K.jsonl", rows)


def write_image_v2(root: Path) -> None:
    """MMEB-V2 MSCOCO_t2i: text query, image candidates (one image+text candidate)."""
    paths = [f"images/coco_{c}.png" for c in COLOURS]
    for colour, path in zip(COLOURS, paths, strict=True):
        _image(root / path, colour)
    rows = []
    for i, colour in enumerate(COLOURS[:3]):
        cands = [paths[i]] + [p for p in paths if p != paths[i]][:2]
        rows.append({"qry_inst": "Find me an everyday image that matches the given caption:",
                     "qry_text": f"a {colour} square", "qry_img_path": "",
                     "tgt_inst": "Represent the given image.", "tgt_text": ["", "", "a caption"] if i == 2 else [],
                     "tgt_img_path": cands})
    _jsonl(root / "MSCOCO_t2i" / "test.jsonl", rows)


def write_video(root: Path, frames_per_video: int = 10) -> None:
    """MMEB-V2 MSR-VTT (global text->video) and NExTQA (local video QA), frame folders of 10 frames."""
    for v, colour in enumerate(COLOURS):
        for f in range(frames_per_video):
            _image(root / "frames" / f"vid{v}" / f"{f:04d}.png", colour, str(f))
    ret = [{"qry_inst": "Find a video that contains the following visual content:", "qry_text": f"a {c} clip",
            "tgt_text": [], "tgt_video_path": [f"frames/vid{v}"]} for v, c in enumerate(COLOURS[:3])]
    _jsonl(root / "MSR-VTT.jsonl", ret)
    qa = [{"qry_inst": "Given a video and a question, select the most accurate answer.", "qry_text": "What colour?",
           "qry_video_path": f"frames/vid{v}", "tgt_text": [c] + [x for x in COLOURS if x != c][:3]}
          for v, c in enumerate(COLOURS[:2])]
    _jsonl(root / "NExTQA.jsonl", qa)


def write_visdoc(root: Path) -> None:
    """MMEB-V2 ViDoRe-V2 task in BEIR form with graded qrels (grades 1 and 2)."""
    folder = root / VIDOC
    for p, colour in enumerate(COLOURS):
        _image(folder / "pages" / f"p{p}.png", colour, f"page {p}")
    _jsonl(folder / "corpus.jsonl", [{"corpus-id": f"p{p}", "image": f"pages/p{p}.png"} for p in range(4)])
    _jsonl(folder / "queries.jsonl", [{"query-id": "q0", "query": "red page"}, {"query-id": "q1", "query": "blue"}])
    _jsonl(folder / "qrels.jsonl", [{"query-id": "q0", "corpus-id": "p0", "score": 2},
                                    {"query-id": "q0", "corpus-id": "p1", "score": 1},
                                    {"query-id": "q1", "corpus-id": "p2", "score": 1}])


def write_all(root: Path) -> Path:
    root = Path(root)
    write_v1(root)
    write_image_v2(root)
    write_video(root)
    write_visdoc(root)
    return root
