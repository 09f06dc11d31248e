"""Issue 13, training side: a bad recipe, a zero batch size or an unusable image path fails before training with
an error naming the file, option, or dataset/row/path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.contrastive_utils import contrastive_args
from train.collators import check_media_paths
from train.data import write_toy_mmeb
from train.train_embedder import main, parse_args

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_mmeb(tmp_path_factory.mktemp("toy"), rows_per_dataset=4)


def _recipe(tmp_path, toy, backbone, **overrides) -> Path:
    recipe = yaml.safe_load((REPO / "train" / "recipes" / "embed_tiny_cpu.yaml").read_text())
    recipe.update({"model_name_or_path": backbone, "datasets": str(toy / "datasets.yaml"), "image_root": str(toy),
                   "ecr_store": str(toy / "ecr"), "output_dir": str(tmp_path / "out"),
                   "per_device_train_batch_size": 4, **overrides})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_yaml_recipe_that_is_not_a_mapping_names_the_file(tmp_path):
    listed = tmp_path / "listed.yaml"
    listed.write_text("- learning_rate: 0.1\n- max_steps: 3\n")
    with pytest.raises(ValueError, match=r"--config .*listed\.yaml: expected a YAML mapping .* got list"):
        parse_args(["--config", str(listed)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: [0.1\n")
    with pytest.raises(ValueError, match=r"--config .*broken\.yaml: cannot read it as YAML"):
        parse_args(["--config", str(broken)])


@pytest.mark.parametrize("option", ["per_device_train_batch_size", "per_device_eval_batch_size",
                                    "gradient_accumulation_steps"])
def test_a_zero_batch_size_is_refused(tmp_path, option):
    with pytest.raises(ValueError, match=rf"TTEContrastiveConfig\.{option} must be a positive integer, got 0"):
        contrastive_args(tmp_path, **{option: 0})


def test_a_zero_batch_size_on_the_command_line_is_refused(tmp_path, toy, tiny_qwen2_vl):
    recipe = _recipe(tmp_path, toy, tiny_qwen2_vl)
    with pytest.raises(ValueError, match=r"per_device_train_batch_size must be a positive integer, got 0"):
        parse_args(["--config", str(recipe), "--per_device_train_batch_size", "0"])


def test_check_media_paths_names_dataset_row_field_and_path(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(b"\x89PNG")
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.png").write_bytes(b"")
    rows = [{"dataset": "D", "row_id": str(i), "qry_image": str(good), "pos_image": ""} for i in range(4)]
    rows[1]["qry_image"] = str(tmp_path / "folder")
    rows[2]["pos_image"] = str(tmp_path / "missing.png")
    rows[3]["neg_image"] = str(tmp_path / "empty.png")
    with pytest.raises(FileNotFoundError) as error:
        check_media_paths(rows)
    message = str(error.value)
    assert "3 image path(s)" in message
    assert f"dataset 'D' row '1' field 'qry_image': {tmp_path / 'folder'} is a directory" in message
    assert f"dataset 'D' row '2' field 'pos_image': {tmp_path / 'missing.png'} no such file" in message
    assert f"dataset 'D' row '3' field 'neg_image': {tmp_path / 'empty.png'} is an empty file" in message
    check_media_paths(rows[:1])  # a good row passes
    from datasets import Dataset

    with pytest.raises(FileNotFoundError, match=r"row '1' field 'qry_image'"):
        check_media_paths(Dataset.from_list([{k: r.get(k, "") for k in ("dataset", "row_id", "qry_image",
                                                                          "pos_image")} for r in rows[:2]]))


def test_training_on_a_row_whose_image_is_a_directory_fails_before_the_first_step(tmp_path, toy, tiny_qwen2_vl):
    data = tmp_path / "data"
    data.mkdir()
    lines = (toy / "ToyCaption.jsonl").read_text().splitlines()
    row = json.loads(lines[-1])
    row["qry_image_path"] = "images"  # a folder
    lines[-1] = json.dumps(row)
    (data / "ToyCaption.jsonl").write_text("\n".join(lines) + "\n")
    (data / "datasets.yaml").write_text(yaml.safe_dump({"datasets": [{"name": "ToyCaption",
                                                                      "path": str(data / "ToyCaption.jsonl")}]}))
    recipe = _recipe(tmp_path, toy, tiny_qwen2_vl, datasets=str(data / "datasets.yaml"), max_steps=2)
    expected = rf"(?s)checked before training.*dataset 'ToyCaption' row '{len(lines) - 1}' field 'qry_image': "
    with pytest.raises(FileNotFoundError, match=expected + rf"{toy / 'images'} is a directory"):
        main(["--config", str(recipe)])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_collator_names_the_training_row_of_a_bad_text_field(tiny_qwen2_vl):
    from processing_tte import TTEProcessor
    from train.collators import TTEContrastiveCollator

    rows = [{"dataset": "D", "row_id": str(i), "qry_text": "q", "qry_image": "", "pos_text": "p", "pos_image": ""}
            for i in range(2)]
    rows[1]["qry_instruction"] = float("nan")  # a NaN cell of a table
    with pytest.raises(TypeError, match=r"query batch of rows \[D/0, D/1\]: query row 1 field 'instruction' must be"):
        TTEContrastiveCollator(TTEProcessor.from_backbone(tiny_qwen2_vl))(rows)
