"""The synthetic benchmark: deterministic, train and test scenes apart, and an oracle teacher that is right
without ever seeing the candidates."""

import inspect
import json
import random

import pytest

from eval.mmeb import DataSource, load_task
from eval.mmeb.image import candidate_name
from eval.synthetic.scenes import Card, Scene
from eval.synthetic.tasks import TASKS, teach_target
from eval.synthetic.write import train_dataset_name, write_benchmark
from eval.tasks import all_tasks
from processing_tte import parse_ecr
from train.ecr_store import ECRStore


def gold_answer(target) -> str:
    """What the teacher should conclude, read off the gold candidate."""
    return parse_ecr(teach_target(target)).answer


@pytest.mark.parametrize("name", list(TASKS))
def test_teacher_reaches_the_gold_answer_from_the_query_alone(name):
    task, rng = TASKS[name], random.Random(1)
    assert list(inspect.signature(task.teach).parameters) == ["scene", "params"]  # no access to candidates
    for _ in range(200):
        example = task.make(rng)
        answer = parse_ecr(task.teach(example.scene, example.params)).answer
        assert answer == gold_answer(example.candidates[0])
        others = [gold_answer(c) for c in example.candidates[1:]]
        assert answer not in others  # the gold is the only right candidate


def test_links_follow_two_hops():
    scene = Scene((Card("black", "red"), Card("red", "green"), Card("green", "blue"), Card("white", "black")))
    assert TASKS["Syn-Links"].teach(scene, {"start": "black"}) == "<think>black to red. red to green.</think> " \
                                                                  "Answer: green"
    image = scene.render()
    assert image.size == (32, 32) and image.getpixel((20, 4)) == (220, 30, 30)  # top right card's top is red


def test_registry_matches_the_tasks():
    specs = all_tasks("synthetic")
    assert list(specs) == list(TASKS)
    for name, task in TASKS.items():
        assert (specs[name].category, specs[name].task_type) == (task.category, task.task_type)


def test_written_benchmark_is_deterministic_and_complete(tmp_path):
    first = write_benchmark(tmp_path / "a", num_train=5, num_test=4, seed=3)
    second = write_benchmark(tmp_path / "b", num_train=5, num_test=4, seed=3)
    for split in ("train", "eval"):
        for name in TASKS:
            assert (first / split / f"{name}.jsonl").read_text() == (second / split / f"{name}.jsonl").read_text()
    store, specs = ECRStore(first / "ecr-teacher"), all_tasks("synthetic")
    for name in TASKS:
        rows = [json.loads(line) for line in (first / "eval" / f"{name}.jsonl").read_text().splitlines()]
        train = [json.loads(line) for line in (first / "train" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and len(train) == 5
        for i, row in enumerate(rows):
            assert store.get(name, i, "query") is not None
            for text, path in zip(row["tgt_text"], row["tgt_img_path"], strict=True):
                assert store.get(name, candidate_name(specs[name].parser, text, path), "target") is not None
                assert not path or (first / "eval" / path).is_file()
        for i in range(5):
            for side in ("query", "target"):
                assert store.get(train_dataset_name(name), i, side) is not None
    # test scenes are not training scenes
    def rows(split):
        return [json.loads(line) for line in (first / split / "Syn-T2I.jsonl").read_text().splitlines()]

    train_queries = {row["qry"] for row in rows("train")}
    test_queries = {row["qry_text"] for row in rows("eval")}
    assert not any(q.endswith(t) for q in train_queries for t in test_queries)


def test_teacher_target_ecr_is_keyed_by_the_image_loaders_candidate_names(tmp_path):
    """The harness looks candidate ECR up by the pool names `eval.mmeb.image` gives (text / path / "path:")."""
    out = write_benchmark(tmp_path / "bench", num_train=1, num_test=3, seed=0)
    store = ECRStore(out / "ecr-teacher")
    source = DataSource(data_root=out / "eval", mmeb_root=out / "eval", cache_dir=tmp_path / "cache")
    for spec in all_tasks("synthetic").values():
        data = load_task(spec, source)
        assert len(data.queries) == 3 and data.corpus
        for name in data.corpus:
            assert store.get(spec.name, name, "target") is not None, (spec.name, name)
        if spec.parser == "image_i2i_vg":  # image-only targets: "path:"
            assert all(name.endswith(".png:") for name in data.corpus)
