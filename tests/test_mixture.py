"""The VLM2Vec-V2 training mixture (`train/recipes/mixture_mmeb_v2.yaml`) read from fixtures of every source in
its published layout: caps and weights, ECR generation requests for both sides, and a training step on a batch
mixing image, video and document rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from processing_tte import REASONER_PROMPTS, TTEProcessor
from tests.contrastive_utils import contrastive_args
from tests.fixtures_mixture import VIDEO_FRAMES, write_mixture, write_visdoc
from train.collators import TTEContrastiveCollator
from train.data import COLUMNS, load_dataset_specs, load_mmeb_train
from train.generate_ecr import build_requests
from train.mixture import ReadContext, read_source
from train.mmeb_data import dataset_config, dataset_configs, load_mmeb_pairs

RECIPE = Path(__file__).resolve().parent.parent / "train" / "recipes" / "mixture_mmeb_v2.yaml"
EXPECTED_FRAMES = [i * (VIDEO_FRAMES - 1) // 7 for i in range(8)]  # floor(i (n-1) / (k-1)): 0 1 2 3 5 6 7 9


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    kwargs = write_mixture(tmp_path_factory.mktemp("mixture"))
    specs = load_dataset_specs(RECIPE, data_root=kwargs["data_root"])
    rows = load_mmeb_train(specs, cache_dir=kwargs["cache_dir"], hub_cache=kwargs["hub_cache"])
    return kwargs, specs, rows


def _first(rows, dataset: str) -> dict:
    return rows[list(rows["dataset"]).index(dataset)]


def _source(mixture, name: str):
    """Every row of one source, before caps and weights (the weighted mixture keeps one random MMEB row)."""
    kwargs, specs, _ = mixture
    context = ReadContext(data_root=kwargs["data_root"], cache_dir=kwargs["cache_dir"], hub_cache=kwargs["hub_cache"])
    return read_source(next(spec for spec in specs if spec.name == name), context)


def test_recipe_lists_the_reference_mixture():
    specs = load_dataset_specs(RECIPE)
    assert len(specs) == 25 and sum(spec.parser == "mmeb" for spec in specs) == 20
    by_name = {spec.name: spec for spec in specs}
    assert (by_name["VisDial"].max_samples, by_name["HatefulMemes"].weight) == (130000, 0.5)
    assert by_name["colpali_train_set"].weight == 10 and by_name["VisRAG-Indomain-data"].weight == 12
    assert by_name["video_caption_300k-video"].mode == "video_retrieval" and by_name["video_qa_240k"].num_frames == 8
    assert {spec.weighting for spec in specs} == {"probability"} and all(s.select == "first" for s in specs
                                                                         if s.max_samples)
    assert len(dataset_configs([str(RECIPE)])) == 25  # what generate_ecr / distill_reasoner get from --datasets


def test_every_source_loads_with_the_recipe_weights(mixture):
    _, specs, rows = mixture
    assert rows.column_names == COLUMNS
    sizes = {"video_qa_240k": 3, "video_caption_300k": 3, "video_caption_300k-video": 3,
             "colpali_train_set": 4, "VisRAG-Indomain-data": 4}  # the QA row without frames is left out
    total = sum(sizes.get(spec.name, 3) for spec in specs)
    weights = sum(spec.weight for spec in specs)
    counts = {name: list(rows["dataset"]).count(name) for name in set(rows["dataset"])}
    assert counts == {spec.name: max(1, round(spec.weight / weights * total)) for spec in specs}
    assert set(rows.filter(lambda r: r["dataset"] == "video_qa_240k")["row_id"]) == {"0", "1", "2"}


def test_rows_of_each_source_family(mixture):
    rows = mixture[2]
    image = _source(mixture, "MSCOCO_i2t")[0]
    assert image["qry_text"] == "original MSCOCO_i2t query 0" and Path(image["qry_image"]).is_file()
    assert image["neg_text"] == "MSCOCO_i2t wrong 0" and image["qry_video"] == []
    pages = rows.filter(lambda r: r["dataset"] == "colpali_train_set")
    by_id = {row["row_id"]: row["pos_image"] for row in pages}
    assert by_id["0"] == by_id["3"] != by_id["1"] and Path(by_id["0"]).is_file()  # content-addressed, stored once
    assert Path(by_id["0"]).stem == __import__("hashlib").sha256(Path(by_id["0"]).read_bytes()).hexdigest()
    assert pages[0]["qry_instruction"].startswith("Find a document image") and pages[0]["qry_image"] == ""
    caption, retrieval, qa = (_first(rows, name) for name in ("video_caption_300k", "video_caption_300k-video",
                                                                "video_qa_240k"))
    assert [Path(f).name for f in caption["qry_video"]] == [f"frame_{i}.jpg" for i in EXPECTED_FRAMES]
    assert caption["pos_text"].endswith("caption 0.") and caption["pos_video"] == []
    assert retrieval["qry_text"] == caption["pos_text"] and retrieval["pos_video"] == caption["qry_video"]
    assert qa["qry_text"] == "What colour is video 0?" and qa["pos_text"] == "red" and len(qa["qry_video"]) == 8


def test_caps_keep_the_first_rows_and_both_splits_read(mixture):
    kwargs, specs, _ = mixture
    imagenet = next(spec for spec in specs if spec.name == "ImageNet_1K")
    capped = dataclasses.replace(imagenet, max_samples=2, weighting="rows")
    diverse = dataclasses.replace(imagenet, name="ImageNet_1K-diverse", split="diverse_instruction", weighting="rows")
    rows = load_mmeb_train([capped, diverse], data_root=kwargs["data_root"])
    first = rows.filter(lambda r: r["dataset"] == "ImageNet_1K")
    assert list(first["row_id"]) == ["0", "1"]
    assert rows.filter(lambda r: r["dataset"] == "ImageNet_1K-diverse")[0]["qry_text"].startswith(
        "diverse_instruction ImageNet_1K")


def test_visual_documents_from_save_to_disk(tmp_path):
    write_visdoc(tmp_path / "data", tmp_path / "hub", layout="save_to_disk")
    specs = [spec for spec in load_dataset_specs(RECIPE, data_root=tmp_path / "data") if spec.parser == "visrag"]
    spec = dataclasses.replace(specs[0], weighting="rows", weight=1)
    rows = load_mmeb_train([spec], cache_dir=str(tmp_path / "cache"))
    assert len(rows) == 4 and all(Path(path).parent == tmp_path / "cache" / "pages" for path in rows["pos_image"])


def test_ecr_requests_for_both_sides_with_each_source_task_type(mixture, tiny_qwen2_vl):
    kwargs, specs, rows = mixture
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    wanted = ("ImageNet_1K", "CIRR", "MSCOCO", "colpali_train_set", "VisRAG-Indomain-data", "video_caption_300k",
              "video_caption_300k-video", "video_qa_240k")
    expected = {"ImageNet_1K": "classification", "CIRR": "composed_retrieval", "MSCOCO": "grounding"}
    for spec in (dataset_config(spec) for spec in specs if spec.name in wanted):
        pairs = load_mmeb_pairs(spec, cache_dir=kwargs["cache_dir"], hub_cache=kwargs["hub_cache"])
        assert [p.row_id for p in pairs] == list(_source(mixture, spec.name)["row_id"])  # every capped row, once
        assert set(rows.filter(lambda r, n=spec.name: r["dataset"] == n)["row_id"]) <= {p.row_id for p in pairs}
        requests = build_requests(pairs, spec.task_type, ("query", "target"), teacher_hint=True)
        assert [r.side for r in requests[:2]] == ["query", "target"] and len(requests) == 2 * len(pairs)
        task_type = expected.get(spec.name, "video" if spec.parser.startswith("llava") else "visual_document")
        assert {r.task_type for r in requests} == {task_type}, spec.name
        for request in requests[:2]:
            messages, media = processor.reasoner_messages(request.row, request.task_type, request.side,
                                                          request.hint, where=spec.name)
            text = messages[0]["content"][-1]["text"]
            assert REASONER_PROMPTS[task_type][("query", "target").index(request.side)] in text
            kinds = [part["type"] for part in messages[0]["content"][:-1]]
            assert kinds == (["video"] if request.row.get("video") else ["image"] if request.row.get("image") else [])
            assert all(len(video) == 8 for video in media["videos"])


def test_distillation_refuses_video_rows_by_name(mixture, tiny_qwen2_vl):
    from train.distill_reasoner import _example

    kwargs, specs, _ = mixture
    spec = dataset_config(next(spec for spec in specs if spec.name == "video_qa_240k"))
    pair = load_mmeb_pairs(spec)[0]
    with pytest.raises(ValueError, match="video_qa_240k/0/query: video rows are not supported by reasoner "
                                         "distillation"):
        _example(TTEProcessor.from_backbone(tiny_qwen2_vl), pair, "query", spec.task_type, "Answer: red")


def test_training_step_on_image_video_and_document_rows(mixture, tiny_qwen2_vl, tmp_path):
    from modeling_tte import TTEForEmbedding
    from train.trainer import TTEContrastiveTrainer

    batch = [dict(_source(mixture, name)[0], qry_ecr="Answer: x", pos_ecr="Answer: y")
             for name in ("MSCOCO_i2t", "video_caption_300k", "colpali_train_set", "video_caption_300k-video")]
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    collated = TTEContrastiveCollator(processor)(batch)
    assert "pixel_values_videos" in collated["query"] and "pixel_values_videos" in collated["target"]
    assert "pixel_values" in collated["query"] and "pixel_values" in collated["target"]
    assert collated["negative"]["input_ids"].shape[0] == 1  # the MMEB row's hard negative
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = contrastive_args(tmp_path, max_steps=1, per_device_train_batch_size=4, learning_rate=0.1,
                            homogeneous_batches=False)  # one batch mixing the four kinds of rows
    trainer = TTEContrastiveTrainer(model=model, args=args, train_dataset=batch,
                                    data_collator=TTEContrastiveCollator(processor))
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
