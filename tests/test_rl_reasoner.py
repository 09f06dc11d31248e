"""RL of the reasoner (TRL GRPOTrainer, the frozen embedder as the reward): the retrieval reward prefers an ECR that
names the gold answer, every reward function is batched, GRPO moves the policy and never the embedder, a 2-process
`accelerate launch` run completes, and its checkpoint is a reasoner for `train.generate_ecr` and `eval.run_mmeb`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from trl import GRPOConfig, ModelConfig

from train.ecr_store import ECRRecord, ECRStore
from train.rewards import FormatReward, LengthPenalty, RetrievalReward
from train.rl_reasoner import RLArguments, build_trainer, grouped_order

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]
REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def write_data(root: Path) -> tuple[list[dict], Path]:
    """Two MMEB-format datasets: `words` (text queries whose only clue is the ECR) and `cards` (image queries);
    colour targets; a teacher store with the ECR of every side."""
    (root / "images").mkdir(parents=True)
    store, datasets = ECRStore(root / "teacher"), []
    for name in ("words", "cards"):
        lines, records = [], []
        for i, colour in enumerate(COLOURS * 2):
            image = f"{name}{i}.png" if name == "cards" else ""
            if image:
                Image.new("RGB", (32, 32), colour).save(root / "images" / image)
            lines.append({"qry": ("<|image_1|>\n" if image else "") + "Which colour?", "qry_image_path": image,
                          "pos_text": colour, "pos_image_path": ""})
            records += [ECRRecord(name, str(i), "query", f"<think>It is {colour}.</think> Answer: {colour}", colour,
                                  "teacher", "0" * 16),
                        ECRRecord(name, str(i), "target", f"Answer: {colour}", colour, "teacher", "0" * 16)]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        store.add(records)
        datasets.append({"name": name, "path": str(root / f"{name}.jsonl"), "task_type": "vqa"})
    return datasets, root / "teacher"


@pytest.fixture(scope="module")
def rl_setup(tiny_qwen2_vl, tmp_path_factory):
    """The data and a tiny embedder trained for a few steps on the teacher's ECR."""
    from train.train_embedder import main as train

    root = tmp_path_factory.mktemp("rl")
    datasets, store = write_data(root / "data")
    train(["--model_name_or_path", tiny_qwen2_vl, "--dtype", "float32", "--ecr_mode", "full",
           "--datasets", json.dumps({"name": "words", "path": datasets[0]["path"]}),
           "--image_root", str(root / "data" / "images"), "--ecr_store", str(store),
           "--output_dir", str(root / "embedder"), "--use_cpu", "true", "--per_device_train_batch_size", "6",
           "--max_steps", "30", "--learning_rate", "1e-3", "--loss_temperature", "0.05", "--save_strategy", "no",
           "--report_to", "none", "--seed", "0", "--disable_tqdm", "true"])
    return {"datasets": datasets, "store": store, "images": root / "data" / "images", "embedder": root / "embedder",
            "root": root}


def rl_columns(dataset: str, side: str, colour: str, negatives: list[str]) -> dict:
    return {"dataset": dataset, "side": side, "query": json.dumps({"text": "Which colour?",
                                                                   "ecr": f"Answer: {colour}"}),
            "target": json.dumps({"text": colour, "ecr": f"Answer: {colour}"}),
            "negatives": json.dumps([{"text": c, "ecr": f"Answer: {c}"} for c in negatives])}


def call(reward, completions: list[str], rows: list[dict]) -> list[float]:
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    return reward(prompts=[[]] * len(completions), completions=completions,
                  completion_ids=[[0] * len(c.split()) for c in completions], **columns)


def test_retrieval_reward_prefers_the_gold_answer_and_is_batched(rl_setup):
    reward = RetrievalReward.from_pretrained(str(rl_setup["embedder"]), in_batch_negatives=False)
    assert reward.temperature == 0.05  # the temperature the embedder was trained at, saved in its config
    right, wrong = [], []
    for colour in COLOURS:
        others = [c for c in COLOURS if c != colour]
        row = rl_columns("words", "query", colour, others)
        scores = call(reward, [f"<think>It is {colour}.</think> Answer: {colour}",
                               f"<think>It is {others[0]}.</think> Answer: {others[0]}"], [row, row])
        right.append(scores[0])
        wrong.append(scores[1])
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in right + wrong)
    assert sum(right) / len(right) > sum(wrong) / len(wrong) + 0.2
    assert sum(r > w for r, w in zip(right, wrong, strict=True)) >= 5

    # a batch mixing sides and datasets: one float per completion; the target side scores its sampled ECR too
    rows = [rl_columns("words", "query", "red", ["blue"]), rl_columns("words", "target", "red", ["blue"]),
            rl_columns("cards", "query", "green", ["black", "green"]), rl_columns("words", "target", "red", ["blue"])]
    completions = ["Answer: red", "Answer: red", "Answer: green", "Answer: blue"]
    scores = call(RetrievalReward.from_pretrained(str(rl_setup["embedder"])), completions, rows)
    assert len(scores) == 4 and all(isinstance(s, float) for s in scores)
    assert scores[1] > scores[3]  # the target's own colour as its ECR retrieves its query better than another
    for kind in ("reciprocal_rank", "margin"):
        other = call(RetrievalReward.from_pretrained(str(rl_setup["embedder"]), kind=kind), completions, rows)
        assert len(other) == 4 and other != scores
    assert call(FormatReward(), ["<think>a</think> Answer: b", "Answer: b", "<think>a Answer: b", "b"], rows) == [
        1.0, 1.0, 0.0, 0.0]
    assert call(LengthPenalty(2), ["a", "a b", "a b c d", "a b c"], rows) == [0.0, 0.0, -1.0, -0.5]


def test_grouped_order_keeps_each_generation_batch_in_one_dataset():
    names = ["a"] * 5 + ["b"] * 3
    order = grouped_order(names, 4, seed=0)
    assert len(order) % 4 == 0 and set(order) == set(range(8))
    assert all(len({names[i] for i in order[k:k + 4]}) == 1 for k in range(0, len(order), 4))
    assert order == grouped_order(names, 4, seed=0) != grouped_order(names, 4, seed=1)


def grpo_config(tmp_path, **overrides) -> GRPOConfig:
    settings = dict(output_dir=str(tmp_path / "rl"), max_steps=3, per_device_train_batch_size=8, num_generations=4,
                    max_completion_length=8, learning_rate=1e-3, beta=0.04, use_cpu=True, report_to="none",
                    logging_steps=1, save_strategy="no", seed=0, bf16=False, gradient_checkpointing=False,
                    lr_scheduler_type="constant", log_completions=False, disable_tqdm=True)
    return GRPOConfig(**{**settings, **overrides})


def test_grpo_moves_the_policy_not_the_vision_tower_nor_the_embedder(rl_setup, tiny_qwen2_vl, tmp_path):
    from train.distill_reasoner import save_student, vision_tower

    args = RLArguments(embedder=str(rl_setup["embedder"]), ecr_store=str(rl_setup["store"]),
                       datasets=rl_setup["datasets"], image_root=str(rl_setup["images"]), num_negatives=3,
                       sides=["query", "target"])
    trainer = build_trainer(args, grpo_config(tmp_path), ModelConfig(model_name_or_path=tiny_qwen2_vl,
                                                                     dtype="float32"))
    assert len(trainer.train_dataset) == 48 and set(trainer.train_dataset["side"]) == {"query", "target"}
    groups = trainer.train_dataset["batch_group"]  # cards queries have images, their targets do not
    assert all(len(set(groups[k:k + 2])) == 1 for k in range(0, 48, 2))
    embedder = trainer.reward_funcs[0].encoder.model
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    frozen = {n: p.detach().clone() for n, p in embedder.named_parameters()}
    trainer.train()  # image and text-only prompts in one run: each generation batch holds one dataset and side
    rewards = [entry["rewards/retrieval_probability/mean"] for entry in trainer.state.log_history
               if "rewards/retrieval_probability/mean" in entry]
    assert len(rewards) == 3
    vision_name, _ = vision_tower(trainer.model)
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert moved and not any(n.startswith(vision_name + ".") for n in moved)
    assert all(torch.equal(frozen[n], p) for n, p in embedder.named_parameters())
    folder = save_student(trainer, prompts=trainer.reasoner_prompts)
    assert (folder / "config.json").is_file() and (folder / "reasoner_prompts.yaml").is_file()


def generated_by(store: Path, reasoner: str) -> int:
    return sum(record.reasoner == reasoner for record in ECRStore(store))


@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate CLI is not next to this Python")
def test_two_process_launch_yields_a_reasoner_for_generate_ecr_and_run_mmeb(rl_setup, tiny_qwen2_vl, tmp_path):
    from eval.run_mmeb import main as run_mmeb
    from tests import fixtures_image
    from tests.test_distributed_training import _free_port, _run
    from tests.test_eval_harness import source_args
    from train.generate_ecr import main as generate

    out = tmp_path / "rl-2proc"
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               "-m", "train.rl_reasoner", "--model_name_or_path", tiny_qwen2_vl,
               "--embedder", str(rl_setup["embedder"]), "--ecr_store", str(rl_setup["store"]),
               "--image_root", str(rl_setup["images"]), "--output_dir", str(out), "--num_negatives", "3",
               "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "4",
               "--max_completion_length", "6", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no",
               "--bf16", "false", "--gradient_checkpointing", "false", "--dtype", "float32", "--logging_steps", "1",
               "--log_completions", "false", "--datasets", *[json.dumps(d) for d in rl_setup["datasets"]]]
    returncode, stdout, stderr = _run(command, tmp_path / "logs", timeout=400)
    assert returncode == 0, f"{stdout[-3000:]}\n{stderr[-6000:]}"
    assert (out / "config.json").is_file() and "RL reasoner saved" in stdout
    assert [e["step"] for e in json.loads((out / "reward_log.json").read_text()) if "reward" in e] == [1, 2]

    store = tmp_path / "generated"
    assert generate(["--model_name_or_path", str(out), "--ecr_store", str(store), "--max_new_tokens", "4",
                     "--image_root", str(rl_setup["images"]), "--datasets", json.dumps(rl_setup["datasets"][1])]) == 0
    assert generated_by(store, str(out)) == 24  # 12 rows, query and target

    kwargs = fixtures_image.write("MSCOCO_t2i", "snapshot", tmp_path / "mmeb")
    eval_store = tmp_path / "eval-ecr"
    scores = run_mmeb(["--model", str(rl_setup["embedder"]), "--tasks", "MSCOCO_t2i", *source_args(kwargs),
                       "--ecr-store", str(eval_store), "--reasoner", str(out), "--reasoner-max-new-tokens", "3",
                       "--out", str(tmp_path / "scores")])
    assert set(scores) == {"MSCOCO_t2i"} and generated_by(eval_store, str(out)) > 0
