"""The reasoner prompt registry: every training source and evaluation task has its own prompt for both sides, the
teacher's hint stays out of student and evaluation prompts, a custom file overrides only what it names, prompts
travel with the processor, a changed prompt makes its traces stale, and the dry run shows the messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from eval.ecr import evaluation_requests
from eval.mmeb import DataSource, load_task
from eval.synthetic.write import write_benchmark
from eval.tasks import all_tasks
from processing_tte import TTEProcessor
from prompts_tte import REGISTRY_FILE, PromptRegistry
from train.data import load_dataset_specs
from train.distill_reasoner import _example
from train.ecr_store import ECRStore
from train.generate_ecr import LocalBackend, build_requests, main, run_generation
from train.mmeb_data import MMEBDatasetConfig, load_mmeb_pairs

REPO = Path(__file__).resolve().parents[1]
SHIPPED = PromptRegistry.shipped()
HINT_MARK = SHIPPED.data["hint"].split("{hint}")[0]  # the fixed words that open the hint sentence


def training_sources() -> list:
    """Every source of the shipped training recipes (the VLM2Vec-V2 mixture and the embedder recipes)."""
    recipes = ["mixture_mmeb_v2.yaml", "embed_qwen2vl_2b.yaml", "embed_qwen2vl_7b.yaml"]
    specs = []
    for name in recipes:
        data = yaml.safe_load((REPO / "train" / "recipes" / name).read_text())
        specs += load_dataset_specs(data["datasets"]) if isinstance(data["datasets"], list) else []
    return specs


@pytest.mark.parametrize("benchmark", ["mmeb_v2", "mmeb_v1"])
def test_every_evaluation_task_has_its_own_prompt_on_both_sides(benchmark):
    tasks = all_tasks(benchmark)
    assert len(tasks) == {"mmeb_v2": 78, "mmeb_v1": 36}[benchmark]
    for name, spec in tasks.items():
        assert SHIPPED.family(name) is not None, f"{name} is not in {REGISTRY_FILE}"
        for side in ("query", "target"):
            prompt = SHIPPED.prompt(name, spec.task_type, side)
            assert "Answer: <" in prompt and HINT_MARK not in prompt


def test_every_training_source_has_its_own_prompt_and_shares_it_with_its_evaluation_task():
    specs = training_sources()
    assert len({spec.name for spec in specs}) >= 25
    for spec in specs:
        assert SHIPPED.family(spec.name) is not None, f"training source {spec.name} is not in {REGISTRY_FILE}"
    evaluation = all_tasks("mmeb_v2")
    for spec in specs:  # a subset that is also an evaluation task is asked the same thing at both times
        task = evaluation.get(spec.name) or evaluation.get(spec.name.replace("_", "-"))
        if task is not None:
            for side in ("query", "target"):
                assert SHIPPED.prompt(spec.name, spec.task_type, side) == SHIPPED.prompt(task.name, task.task_type,
                                                                                        side)


def test_prompts_differ_where_the_paper_designs_them_differently():
    memes = SHIPPED.prompt("HatefulMemes", "classification", "query")
    assert "transcribe the text" in memes and memes != SHIPPED.prompt("ImageNet-1K", "classification", "query")
    assert "background directly behind" in SHIPPED.prompt("RefCOCO", "grounding", "query")
    assert SHIPPED.prompt("MSR-VTT", "video_retrieval", "query") != SHIPPED.prompt("Video-MME", "video_qa", "query")
    fallback = SHIPPED.prompt("some-new-dataset", "vqa", "query")
    assert fallback.startswith("Reason about the image to answer the question.")


def test_the_hint_reaches_only_teacher_runs(tmp_path, tiny_qwen2_vl):
    from tests.test_generate_ecr import write_mmeb

    data, root = write_mmeb(tmp_path, rows=2)
    pairs = load_mmeb_pairs(MMEBDatasetConfig(name="OK-VQA", path=str(data), task_type="vqa"), image_root=root)
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    backend = LocalBackend(tiny_qwen2_vl, processor=processor)
    teacher = build_requests(pairs, "vqa", teacher_hint=True)
    assert all(HINT_MARK in backend.prepare(r)[2] for r in teacher if r.side == "query")
    student = _example(processor, pairs[0], "query", "vqa", "<think>t</think> Answer: red")
    assert HINT_MARK not in json.dumps(student) and "outside knowledge" in json.dumps(student)
    spec = all_tasks("synthetic")["Syn-I2T"]
    bench = write_benchmark(tmp_path / "syn", num_train=1, num_test=2, tasks=[spec.name])
    task = load_task(spec, DataSource(data_root=bench / "eval", mmeb_root=bench / "eval"))
    keys = [(spec.name, q.row_id, "query") for q in task.queries] + [(spec.name, c, "target") for c in task.corpus]
    requests = evaluation_requests(task, keys)
    assert requests and all(r.hint is None and r.dataset == spec.name for r in requests)
    assert not any(HINT_MARK in backend.prepare(r)[2] for r in requests)


def test_a_custom_file_overrides_one_dataset_and_leaves_the_others(tmp_path):
    custom = tmp_path / "mine.yaml"
    custom.write_text(yaml.safe_dump({"name": "mine", "version": 3, "families": {
        "terse": {"query": "Say what the caption shows.", "target": "Say what the image shows.", "answer": "a gist"}},
        "datasets": {"MSCOCO_t2i": "terse"}}))
    registry = PromptRegistry.load(custom)
    assert registry.name == "mine@3"
    assert registry.prompt("MSCOCO_t2i", "retrieval", "query").startswith("Say what the caption shows.\n")
    assert "'Answer: <a gist>'" in registry.prompt("MSCOCO_t2i", "retrieval", "query")
    for name, spec in all_tasks("mmeb_v2").items():
        if name != "MSCOCO_t2i":
            assert registry.prompt(name, spec.task_type, "target") == SHIPPED.prompt(name, spec.task_type, "target")
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"datasets": {"MSCOCO_t2i": "nowhere"}}))
    with pytest.raises(ValueError, match=r"broken\.yaml: dataset 'MSCOCO_t2i' names the unknown family 'nowhere'"):
        PromptRegistry.load(broken)


def test_the_registry_is_saved_and_reloaded_with_the_processor(tmp_path, tiny_qwen2_vl):
    custom = tmp_path / "mine.yaml"
    custom.write_text(yaml.safe_dump({"name": "mine", "version": 2, "families": {
        "terse": {"query": "Q.", "target": "T."}}, "datasets": {"OK-VQA": "terse"}}))
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl, prompts=str(custom))
    processor.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / REGISTRY_FILE).is_file()
    again = TTEProcessor.from_pretrained(tmp_path / "saved")
    assert again.prompts.name == "mine@2" and again.prompts.prompt("OK-VQA", "vqa", "query").startswith("Q.\n")
    assert again.prompts.prompt("GQA", "vqa", "query") == SHIPPED.prompt("GQA", "vqa", "query")
    row = {"image": Image.new("RGB", (32, 32), "red"), "text": "what colour?"}
    messages, _ = again.reasoner_messages(row, "vqa", "query", dataset="OK-VQA")
    assert messages[0]["content"][-1]["text"].endswith(again.prompts.prompt("OK-VQA", "vqa", "query"))


def test_a_model_built_on_a_distilled_student_asks_with_the_students_prompts(tmp_path, tiny_qwen2_vl):
    """A student folder holds its registry (`reasoner_prompts.yaml`); a processor wrapped from it, as
    `train_embedder` wraps a TTE_u model's backbone, keeps it, so the unified model thinks with its reasoner's
    prompts (it had asked with the shipped ones)."""
    import shutil

    custom = tmp_path / "mine.yaml"
    custom.write_text(yaml.safe_dump({"name": "mine", "version": 4, "families": {
        "terse": {"query": "Q.", "target": "T."}}, "datasets": {"OK-VQA": "terse"}}))
    student = tmp_path / "student"
    shutil.copytree(tiny_qwen2_vl, student)
    PromptRegistry.load(custom).save(student)
    wrapped = TTEProcessor.from_backbone(str(student))
    assert wrapped.prompts.name == "mine@4"
    wrapped.save_pretrained(tmp_path / "unified")
    assert TTEProcessor.from_pretrained(tmp_path / "unified").prompts.name == "mine@4"
    assert TTEProcessor.from_backbone(str(student), prompts=PromptRegistry.load()).prompts.name == SHIPPED.name
    assert TTEProcessor.from_backbone(tiny_qwen2_vl).prompts.name == SHIPPED.name


def test_a_changed_prompt_makes_the_stored_traces_stale(tmp_path, tiny_qwen2_vl):
    from tests.test_generate_ecr import write_mmeb

    data, root = write_mmeb(tmp_path, rows=3)
    requests = []
    for name in ("OK-VQA", "GQA"):
        pairs = load_mmeb_pairs(MMEBDatasetConfig(name=name, path=str(data), task_type="vqa"), image_root=root)
        requests += build_requests(pairs, "vqa", sides=["query"])
    store = ECRStore(tmp_path / "store")
    first = run_generation(requests, store, LocalBackend(tiny_qwen2_vl, max_new_tokens=4), show_progress=False)
    assert (first.done, first.stale) == (6, 0)
    assert ECRStore(tmp_path / "store").get("OK-VQA", "0", "query").prompt_set == SHIPPED.name
    custom = tmp_path / "mine.yaml"
    custom.write_text(yaml.safe_dump({"name": "mine", "version": 1, "families": {
        "terse": {"query": "Name the colour.", "target": "T."}}, "datasets": {"OK-VQA": "terse"}}))
    backend = LocalBackend(tiny_qwen2_vl, max_new_tokens=4, prompts=str(custom))
    again = run_generation(requests, ECRStore(tmp_path / "store"), backend, show_progress=False)
    assert (again.done, again.skipped, again.stale) == (3, 3, 3)  # OK-VQA regenerated, GQA kept
    reread = ECRStore(tmp_path / "store")
    assert reread.get("OK-VQA", "0", "query").prompt_set == "mine@1"
    assert reread.get("GQA", "0", "query").prompt_set == SHIPPED.name


def test_dry_run_prints_the_messages_without_a_model_or_store(tmp_path, tiny_qwen2_vl, capsys):
    from tests.test_generate_ecr import write_mmeb

    data, root = write_mmeb(tmp_path, rows=4)
    dataset = json.dumps({"name": "HatefulMemes", "path": str(data), "task_type": "classification"})
    status = main(["--model", tiny_qwen2_vl, "--store", str(tmp_path / "store"), "--image_root", str(root),
                   "--datasets", dataset, "--dry_run", "2", "--teacher_hint", "true"])
    out = capsys.readouterr().out
    assert status == 0 and not (tmp_path / "store").exists()
    assert out.count("=== HatefulMemes/") == 4  # 2 rows x 2 sides
    assert "transcribe the text" in out and HINT_MARK in out and "<image: query row" not in out
    assert "<image: HatefulMemes/0/query field 'image' (" in out and "meme_classification" in out


def test_an_empty_registry_asks_with_the_row_alone_as_the_embedder_sees_it(tiny_qwen2_vl):
    plain = PromptRegistry({"name": "plain", "version": 1, "format": "",
                            "families": {"none": {"query": "", "target": ""}}, "datasets": {"toy": "none"}})
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl, prompts=plain)
    row = {"image": Image.new("RGB", (32, 32), "red"), "text": "What colour?"}
    messages, _ = processor.reasoner_messages(row, "vqa", dataset="toy")
    prompt = processor.backbone.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    embedder = processor.embedder_text(processor._user_turn(row, "row")[0], "<think>x</think> Answer: red")
    assert embedder.startswith(prompt) and embedder[len(prompt):].startswith("<think>x</think>")
    assert plain.prompt("toy", "vqa", "query") == ""
    assert plain.prompt("other", "vqa", "query") != ""  # a dataset it does not list keeps its task type's prompt
