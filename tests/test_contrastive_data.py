"""MMEB-train loading (train/data.py) and the contrastive collator (train/collators.py), good rows and bad."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from transformers.testing_utils import CaptureLogger

from processing_tte import TTEProcessor
from train import collators as collators_module
from train.collators import TTEContrastiveCollator
from train.data import load_dataset_specs, load_mmeb_train, normalize_row, write_toy_mmeb
from train.ecr_store import ECRStore


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_mmeb(tmp_path_factory.mktemp("toy"), rows_per_dataset=8)


@pytest.fixture(scope="module")
def processor(tiny_qwen2_vl):
    return TTEProcessor.from_backbone(tiny_qwen2_vl)


def test_load_mmeb_train_maps_placeholders_and_applies_caps_and_weights(toy, tmp_path):
    specs_file = tmp_path / "specs.yaml"
    specs_file.write_text(yaml.safe_dump({"datasets": [
        {"name": "ToyCaption", "path": str(toy / "ToyCaption.jsonl"), "max_samples": 5, "weight": 2.0},
        {"name": "ToyColourQA", "path": str(toy / "ToyColourQA.jsonl"), "weight": 0.5},
    ]}))
    data = load_mmeb_train(load_dataset_specs(specs_file), image_root=str(toy), seed=0)
    names = data["dataset"]
    assert names.count("ToyCaption") == 10 and names.count("ToyColourQA") == 4
    caption_ids = {row["row_id"] for row in data if row["dataset"] == "ToyCaption"}
    assert len(caption_ids) == 5  # the cap keeps 5 distinct rows, the weight repeats each twice
    row = data[0]
    assert "<|image_1|>" not in row["qry_text"] and row["qry_text"] == "Represent the given image."
    assert os.path.isabs(row["qry_image"]) and os.path.isfile(row["qry_image"])
    assert row["pos_image"] == "" and row["pos_text"].startswith("a ")
    qa = [r for r in data if r["dataset"] == "ToyColourQA"][0]
    raw = json.loads((toy / "ToyColourQA.jsonl").read_text().splitlines()[int(qa["row_id"])])
    assert qa["neg_text"] == raw["neg_text"] and qa["pos_text"] == raw["pos_text"]


def test_dataset_specs_are_validated(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        load_dataset_specs([{"name": "x", "max_sample": 3}])
    with pytest.raises(ValueError, match="weight must be a positive"):
        load_dataset_specs([{"name": "x", "weight": 0}])
    with pytest.raises(ValueError, match="non-empty list"):
        load_dataset_specs([])


@pytest.mark.parametrize("row, message", [
    ({"qry": "<|image_1|> a", "qry_image_path": "", "pos_text": "b"}, "'qry' has an <|image_1|> placeholder"),
    ({"qry_image_path": "", "pos_text": "b"}, "missing field 'qry'"),
    ({"qry": "a", "pos_text": "", "pos_image_path": ""}, "'pos_text' and 'pos_image_path' are both empty"),
    ({"qry": 3, "pos_text": "b"}, "'qry' must be a string"),
])
def test_normalize_row_names_the_bad_row(row, message):
    with pytest.raises(ValueError, match="dataset 'D' row 7") as error:
        normalize_row(row, "D", "7", "/root")
    assert message in str(error.value)


def _rows(toy, n=4):
    specs = load_dataset_specs(toy / "datasets.yaml")
    return [dict(r) for r in load_mmeb_train(specs, image_root=str(toy)) if r["dataset"] == "ToyColourQA"][:n]


def test_collator_reads_ecr_from_the_store(toy, processor):
    rows = _rows(toy)
    batch = TTEContrastiveCollator(processor, ecr_store=str(toy / "ecr"))(rows)
    assert set(batch) == {"query", "target", "negative", "target_ids"}
    assert batch["query"]["input_ids"].shape[0] == 4 and batch["query"]["pixel_values"].shape[0] > 0
    store = ECRStore(toy / "ecr")
    text = processor.batch_decode(batch["query"]["input_ids"][:1], skip_special_tokens=False)[0]
    answer = store.get("ToyColourQA", rows[0]["row_id"], "query").answer
    assert f"Answer: {answer}" in text
    negative = processor.batch_decode(batch["negative"]["input_ids"][:1], skip_special_tokens=False)[0]
    assert store.get("ToyColourQA", f"{rows[0]['row_id']}#neg", "target").ecr in negative
    # no store: no ECR at all
    plain = TTEContrastiveCollator(processor)(rows)
    assert "Answer:" not in processor.batch_decode(plain["query"]["input_ids"][:1])[0]


def test_missing_ecr_is_an_error_naming_the_row_or_a_counted_fallback(toy, processor, tmp_path):
    rows = _rows(toy, 2)
    store = ECRStore(tmp_path / "partial")
    store.add([r for r in ECRStore(toy / "ecr") if not (r.row_id == rows[1]["row_id"] and r.side == "query")])
    with pytest.raises(ValueError, match=rf"row ToyColourQA/{rows[1]['row_id']} \(batch index 1\): no query ECR"):
        TTEContrastiveCollator(processor, ecr_store=store)(rows)
    collator = TTEContrastiveCollator(processor, ecr_store=store, on_missing_ecr="no_ecr")
    with CaptureLogger(collators_module.logger) as captured:
        batch = collator(rows)
        collator(rows)
    assert batch["query"]["input_ids"].shape[0] == 2
    assert collator.missing_ecr == 2 and "2 missing so far" in captured.out
    with pytest.raises(ValueError, match="on_missing_ecr must be one of"):
        TTEContrastiveCollator(processor, on_missing_ecr="skip")


def test_bad_rows_raise_errors_naming_the_row(toy, processor):
    collator = TTEContrastiveCollator(processor)
    good = _rows(toy, 1)[0]
    with pytest.raises(FileNotFoundError, match=r"row ToyColourQA/\d+ \(batch index 1\): field 'qry_image'"):
        collator([good, {**good, "qry_image": str(toy / "images" / "missing.png")}])
    with pytest.raises(ValueError, match=r"batch index 0\): the query needs 'qry_text' or 'qry_image'"):
        collator([{**good, "qry_text": "", "qry_image": ""}])
    with pytest.raises(ValueError, match=r"batch index 0: missing field 'row_id'"):
        collator([{k: v for k, v in good.items() if k != "row_id"}])
    with pytest.raises(ValueError, match="empty batch"):
        collator([])


def test_target_ids_are_equal_exactly_for_equal_targets(toy, processor):
    rows = _rows(toy)
    same = [dict(rows[0], row_id="a"), dict(rows[0], row_id="b"), dict(rows[0], row_id="c", pos_text="other")]
    ids = TTEContrastiveCollator(processor)(same)["target_ids"].tolist()
    assert ids[0] == ids[1] != ids[2]


def test_generation_and_training_key_rows_alike(tmp_path):
    from train.data import DatasetSpec
    from train.mmeb_data import MMEBDatasetConfig, load_mmeb_pairs

    rows = [{"id": f"q{i}", "qry": f"question {i} <|image_2|>", "qry_image_path": "a.png", "pos_text": f"answer {i}",
             "pos_image_path": ""} for i in range(3)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pairs = load_mmeb_pairs(MMEBDatasetConfig(name="d", path=str(path)), image_root=str(tmp_path))
    train = load_mmeb_train([DatasetSpec(name="d", path=str(path))], image_root=str(tmp_path))
    assert [p.row_id for p in pairs] == list(train["row_id"]) == ["q0", "q1", "q2"]
    assert pairs[1].query == {"text": "question 1", "image": str(tmp_path / "a.png")} and train[1]["qry_text"] == \
        "question 1"


def test_target_ids_tell_apart_equal_targets_with_different_ecr(toy, processor, tmp_path):
    rows = _rows(toy, 1)
    base = dict(rows[0], pos_text="a red square")
    same = [dict(base, row_id="a", pos_ecr="Answer: red"), dict(base, row_id="b", pos_ecr="Answer: red"),
            dict(base, row_id="c", pos_ecr="Answer: crimson"), dict(base, row_id="d", pos_ecr="")]
    ids = TTEContrastiveCollator(processor)(same)["target_ids"].tolist()
    assert ids[0] == ids[1] and len({ids[0], ids[2], ids[3]}) == 3
    # the same through the store: two rows with one target text whose stored target ECR differ
    from train.ecr_store import ECRRecord

    store = ECRStore(tmp_path / "store")
    store.add([ECRRecord(dataset="D", row_id=row_id, side="target", ecr=ecr, answer=None, reasoner="teacher",
                         prompt_hash="0" * 16)
               for row_id, ecr in (("0", "Answer: red"), ("1", "Answer: scarlet"))])
    plain = {"dataset": "D", "qry_text": "q", "qry_image": "", "pos_text": "a red square", "pos_image": ""}
    collator = TTEContrastiveCollator(processor, ecr_store=store, ecr_sides=("target",))
    first, second = collator([dict(plain, row_id="0"), dict(plain, row_id="1")])["target_ids"].tolist()
    assert first != second
