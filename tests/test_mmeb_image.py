"""MMEB-V2 image tasks and MMEB-V1 tasks read from fixtures in the published layouts, and the reference's
conventions that change scores (MMEB-LAYOUTS.md 2.1 and 5), each pinned so the plausible wrong way fails."""

from pathlib import Path

import pandas as pd
import pytest

from eval.data import TaskDataError
from eval.mmeb import DataSource, check_task, load_task
from eval.mmeb.image import candidate_name
from eval.mmeb.mmeb_v1 import pair_name
from eval.tasks import all_tasks, get_task
from tests import fixtures_image
from tests.published import LAYOUTS

V2_IMAGE = [t.name for t in all_tasks("mmeb_v2").values() if t.modality == "image"]
V1 = list(all_tasks("mmeb_v1"))


def row(qry_inst="<|image_1|>\nRepresent the given image for classification: ", qry_text="", qry="q.jpg",
        tgt_inst="Represent the class label: ", texts=("cat", "dog"), paths=None) -> dict:
    return {"qry_inst": qry_inst, "qry_text": qry_text, "qry_img_path": qry, "tgt_inst": tgt_inst,
            "tgt_text": list(texts), "tgt_img_path": list(paths) if paths is not None else [""] * len(texts)}


def load(tmp_path, task, rows, layout="save_to_disk", benchmark="mmeb_v2"):
    kwargs = fixtures_image.write_rows(task, layout, tmp_path, rows, benchmark)
    return load_task(get_task(task, benchmark), DataSource(**kwargs))




def test_registry_has_the_36_image_tasks_of_each_benchmark():
    assert len(V2_IMAGE) == 36 and len(V1) == 36 and set(V1) == set(V2_IMAGE)


@pytest.mark.parametrize("task", V2_IMAGE)
def test_every_v2_image_task_resolves(task, tmp_path):
    result = check_task(get_task(task), DataSource(**fixtures_image.write(task, "save_to_disk", tmp_path)))
    assert result["ok"], result
    assert result["rows"] == 3


@pytest.mark.parametrize("task", V1)
def test_every_v1_task_resolves(task, tmp_path):
    kwargs = fixtures_image.write(task, "save_to_disk", tmp_path, "mmeb_v1")
    result = check_task(get_task(task, "mmeb_v1"), DataSource(**kwargs))
    assert result["ok"], result
    assert result["rows"] == 3


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("task", "benchmark"), [("WebQA", "mmeb_v2"), ("VisDial", "mmeb_v1")])
def test_each_layout_reads_the_same_task(task, benchmark, layout, tmp_path):
    kwargs = fixtures_image.write(task, layout, tmp_path, benchmark)
    data = load_task(get_task(task, benchmark), DataSource(**kwargs))
    expected = fixtures_image.default_rows(task, benchmark)
    assert [q.row["text"] for q in data.queries] == [r["qry_text"] for r in expected]
    gold = [r["tgt_img_path"][0] for r in expected]
    if benchmark == "mmeb_v1":
        gold = [pair_name(r["tgt_text"][0], r["tgt_img_path"][0]) for r in expected]
    assert [next(iter(q.relevance)) for q in data.queries] == gold
    media = Path(kwargs["cache_dir"]) / ("MMEB-eval" if benchmark == "mmeb_v1" else "MMEB-V2/image-tasks") \
        if layout == "hub" else tmp_path / "mmeb" / "image-tasks"
    for candidate in data.corpus.values():
        assert candidate["image"].is_file() and media in candidate["image"].parents


def test_all_shards_are_read(tmp_path):
    rows = [row(qry_text=f"q{i}", texts=(f"l{i}", "x")) for i in range(4)]
    data = load(tmp_path, "ImageNet-1K", rows, layout="snapshot")
    shards = sorted((tmp_path / "data" / "ziyjiang" / "MMEB_Test_Instruct" / "ImageNet-1K").glob("*.parquet"))
    assert len(shards) == 2
    assert [q.row["text"] for q in data.queries] == ["q0", "q1", "q2", "q3"]


def test_text_candidates_ignore_tgt_inst_and_are_named_by_text(tmp_path):
    for task in ("ImageNet-1K", "OK-VQA", "MSCOCO_i2t"):
        data = load(tmp_path / task, task, [row(texts=("cat", "dog"))])
        assert data.corpus == {"cat": {"text": "cat"}, "dog": {"text": "dog"}}  # no "Represent the class label"
        assert data.queries[0].candidates == ["cat", "dog"] and data.queries[0].relevance == {"cat": 1.0}


def test_query_instructions_follow_each_parser(tmp_path):
    inst = "<|image_1|> Represent the image \n with this question: "
    cls = load(tmp_path / "cls", "ImageNet-1K", [row(qry_inst=inst, qry_text="what \n is it")]).queries[0].row
    assert cls["instruction"] == " Represent the image\n with this question: "  # placeholder out, not stripped
    assert cls["text"] == "what\n is it" and cls["image"].name == "q.jpg"
    qa = load(tmp_path / "qa", "OK-VQA", [row(qry_inst=inst)]).queries[0].row
    assert qa["instruction"] == "Represent the image\n with this question:"  # stripped, then " \n" -> "\n"
    t2i = load(tmp_path / "t2i", "MSCOCO_t2i", [row(qry_inst=inst, qry_text="a \n dog", qry="",
                                                    texts=("", ""), paths=("a.jpg", "b.jpg"))]).queries[0].row
    assert t2i == {"text": "a \n dog", "instruction": " Represent the image \n with this question: "}  # no image


def test_image_targets_use_tgt_inst_and_are_named_by_path(tmp_path):
    tgt_inst = "<|image_1|>\nRepresent the given image \n"
    data = load(tmp_path, "MSCOCO_t2i", [row(qry="", tgt_inst=tgt_inst, texts=("", ""), paths=("a.jpg", "b.jpg"))])
    assert list(data.corpus) == ["a.jpg", "b.jpg"]
    assert data.corpus["a.jpg"]["instruction"] == "\nRepresent the given image\n"
    assert data.corpus["a.jpg"]["text"] == "" and data.corpus["a.jpg"]["image"].name == "a.jpg"
    vg = load(tmp_path / "vg", "MSCOCO", [row(tgt_inst=tgt_inst, texts=("", ""), paths=("a.jpg", "b.jpg"))])
    assert list(vg.corpus) == ["a.jpg:", "b.jpg:"]  # image-only targets: "path:"
    assert vg.corpus["a.jpg:"]["instruction"] == "\nRepresent the given image\n"


@pytest.mark.parametrize("task", ["WebQA", "EDIS"])
def test_captioned_t2i_targets_encode_the_caption_but_are_named_by_path(task, tmp_path):
    data = load(tmp_path, task, [row(qry="", texts=("a page about cats", ""), paths=("a.jpg", "b.jpg"))])
    assert list(data.corpus) == ["a.jpg", "b.jpg"]
    assert [c["text"] for c in data.corpus.values()] == ["a page about cats", ""]
    plain = load(tmp_path / "plain", task, [row(qry="", texts=("", "a caption"), paths=("a.jpg", "b.jpg"))])
    assert [c["text"] for c in plain.corpus.values()] == ["", ""]  # tgt_text[0] blank: no caption for any target


def test_refcoco_matching_keeps_two_targets_in_one_image_apart(tmp_path):
    rows = [row(texts=('"the left dog"', "the right dog", ""), paths=("img.jpg", "img.jpg", "other.jpg"))]
    data = load(tmp_path, "RefCOCO-Matching", rows)
    assert data.queries[0].candidates == ["img.jpg:the left dog", "img.jpg:the right dog", "other.jpg:"]
    assert data.corpus["img.jpg:the left dog"]["text"] == '"the left dog"'  # the name strips quotes, the text not
    assert candidate_name("image_i2i_vg", '"x"', "p.jpg") == "p.jpg:x"


def test_candidates_are_deduplicated_per_task_first_wins_but_keep_their_slot_in_a_row(tmp_path):
    rows = [row(qry="", texts=("first caption", "", "x"), paths=("shared.jpg", "b.jpg", "shared.jpg")),
            row(qry="", texts=("second caption", "y"), paths=("shared.jpg", "c.jpg"))]
    data = load(tmp_path, "WebQA", rows)
    assert data.queries[0].candidates == ["shared.jpg", "b.jpg", "shared.jpg"]  # duplicate keeps its rank slot
    assert list(data.corpus) == ["shared.jpg", "b.jpg", "c.jpg"]
    assert data.corpus["shared.jpg"]["text"] == "first caption"  # the first row of a name wins, task-wide


def test_older_mmeb_subfolder_is_found(tmp_path):
    kwargs = fixtures_image.write_rows("ImageNet-1K", "save_to_disk", tmp_path, [row(qry="q.jpg")])
    image_tasks = tmp_path / "mmeb" / "image-tasks"
    (image_tasks / "MMEB").mkdir()
    (image_tasks / "q.jpg").rename(image_tasks / "MMEB" / "q.jpg")  # image_root image-tasks/MMEB/ of an older YAML
    data = load_task(get_task("ImageNet-1K"), DataSource(**kwargs))
    assert data.queries[0].row["image"] == image_tasks / "MMEB" / "q.jpg"
    (image_tasks / "MMEB" / "q.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"row 0 column 'qry_img_path': image not found: .*q\.jpg or .*MMEB"):
        load_task(get_task("ImageNet-1K"), DataSource(**kwargs))


def test_a_string_target_list_is_an_error_not_one_candidate_per_character(tmp_path):
    rows = [dict(row(), tgt_text="blue")]
    with pytest.raises(TaskDataError, match="row 0 column 'tgt_text': expected a list of strings"):
        load(tmp_path, "ImageNet-1K", rows)


def test_a_nan_instruction_is_an_error(tmp_path):
    frame = pd.DataFrame([row(qry_inst=float("nan"))])  # what a pandas export of a missing instruction holds
    (tmp_path / "data").mkdir()
    frame.to_parquet(tmp_path / "data" / "ImageNet-1K.parquet")
    fixtures_image.write_rows("ImageNet-1K", "save_to_disk", tmp_path / "media", [row()])
    source = DataSource(data_root=tmp_path / "data", mmeb_root=tmp_path / "media" / "mmeb")
    with pytest.raises(TaskDataError, match="row 0 column 'qry_inst': null \\(a NaN"):  # pyarrow stores NaN as null
        load_task(get_task("ImageNet-1K"), source)
    (tmp_path / "data" / "ImageNet-1K.parquet").unlink()
    fixtures_image.write_rows("ImageNet-1K", "save_to_disk", tmp_path / "float", [row(qry_inst=float("nan"))])
    with pytest.raises(TaskDataError, match="row 0 column 'qry_inst': NaN where a string belongs"):
        load_task(get_task("ImageNet-1K"), DataSource(tmp_path / "float" / "data", source.mmeb_root))
    (tmp_path / "data" / "ImageNet-1K.jsonl").write_text('{"qry_inst": NaN, "qry_text": "", "qry_img_path": "q.jpg", '
                                                         '"tgt_text": ["a"], "tgt_img_path": [""]}\n')
    with pytest.raises(TaskDataError, match="row 0 column 'qry_inst'"):  # datasets reads a JSON NaN as None
        load_task(get_task("ImageNet-1K"), source)


def test_an_empty_task_file_is_a_clear_error(tmp_path):
    (tmp_path / "ImageNet-1K.jsonl").write_text("")
    result = check_task(get_task("ImageNet-1K"), DataSource(data_root=tmp_path, mmeb_root=tmp_path))
    assert not result["ok"] and "task ImageNet-1K" in result["error"] and "is empty" in result["error"]


def test_a_missing_image_names_the_row_and_the_path(tmp_path):
    kwargs = fixtures_image.write_rows("MSCOCO_t2i", "save_to_disk", tmp_path,
                                       [row(qry="", texts=("",), paths=("a.jpg",)),
                                        row(qry="", texts=("", ""), paths=("a.jpg", "gone.jpg"))])
    (tmp_path / "mmeb" / "image-tasks" / "gone.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"row 1 column 'tgt_img_path' item 1: image not found: .*gone\.jpg"):
        load_task(get_task("MSCOCO_t2i"), DataSource(**kwargs))


def test_v1_candidates_are_unique_text_image_pairs(tmp_path):
    rows = [{"qry_text": "<|image_1|> Represent the given image for classification\n", "qry_img_path": "q.jpg",
             "tgt_text": ["cat", "dog", "cat"], "tgt_img_path": ["", "", ""]},
            {"qry_text": "Find me an image: a cat", "qry_img_path": "",
             "tgt_text": ["<|image_1|> Represent the given image.", "cat"], "tgt_img_path": ["a.jpg", "a.jpg"]}]
    data = load(tmp_path, "ImageNet-1K", rows, benchmark="mmeb_v1")
    first, second = data.queries
    assert first.row["text"] == " Represent the given image for classification\n" and first.row["image"].is_file()
    assert second.row == {"text": "Find me an image: a cat", "instruction": ""}
    cat, dog = pair_name("cat", ""), pair_name("dog", "")
    assert first.candidates == [cat, dog, cat] and first.relevance == {cat: 1.0}
    image_pair = pair_name("<|image_1|> Represent the given image.", "a.jpg")
    assert second.candidates == [image_pair, pair_name("cat", "a.jpg")]
    assert len(data.corpus) == 4  # ("cat", "") and ("cat", "a.jpg") stay two candidates
    image_target = data.corpus[second.candidates[0]]
    assert image_target["text"] == " Represent the given image." and image_target["image"].name == "a.jpg"
    assert "image" not in data.corpus[cat]
