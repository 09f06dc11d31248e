"""Reinforcement learning of the reasoner for retrieval: TRL's `GRPOTrainer`, unchanged, with a frozen embedder as the
reward model (`train.rewards`).

Each training row's side (the query by default) becomes a prompt, exactly the prompt `train.generate_ecr` asks
with. For each prompt the policy samples `num_generations` ECR; the frozen embedder embeds each with its row, and
the reward is how well it retrieves the row's pair among negatives that carry their stored ECR (`--reward`:
`probability`, the gold's InfoNCE probability at the embedder's temperature; `reciprocal_rank`; `margin`). The
negatives of a row are its own (where the data has them), `--num_negatives` gold targets of other rows of its
dataset (seeded), and the other rows of its dataset in the batch. A format reward (`--format_weight`) and a
length penalty beyond `--length_budget` tokens (`--length_weight`) are added with their weights. KL to the
starting policy is TRL's `--beta`. The vision tower is frozen by default; full fine-tuning or LoRA
(`--use_peft true`, merged at the end). The output folder is a reasoner checkpoint like a distilled student's.

Start from the SFT student (`train.distill_reasoner`), with the embedder it serves (on 8 GPUs; `--use_vllm true`
generates with vLLM, TRL's option, on GPU machines):

    accelerate launch --num_processes 8 -m train.rl_reasoner --model_name_or_path runs/student-2b \
        --embedder runs/tte-2b --ecr_store ecr/teacher --image_root /data/MMEB-train \
        --datasets train/recipes/mixture_mmeb_v2.yaml --output_dir runs/student-2b-rl \
        --num_generations 8 --max_completion_length 256 --beta 0.04 --learning_rate 1e-6 --bf16 true

TTE_u: a unified checkpoint can be the `--embedder` (its frozen copy gives the reward). The policy's backbone is
then no longer the one the head was trained on, so the head must be re-trained on the RL checkpoint
(`train.train_embedder --mode unified --tuning head --model_name_or_path <rl output>`); training the backbone
through the head's own reward in one model is not built.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from processing_tte import TTEProcessor
from train.data import ECR_SIDES
from train.distill_reasoner import load_reasoner, prompt_example, save_student
from train.ecr_store import ECRStore
from train.mmeb_data import MMEBPair, dataset_configs, load_mmeb_pairs
from train.reasoner_backends import backend_prompts, end_of_turn_ids
from train.rewards import REWARD_KINDS, FormatReward, LengthPenalty, RetrievalReward, TraceDecoder, distinct_targets

logger = logging.getLogger(__name__)


@dataclass
class RLArguments:
    r"""
    Data, reward and freezing options of `python -m train.rl_reasoner` (alongside TRL's `GRPOConfig` and
    `ModelConfig`).

    Args:
        embedder (`str`): the frozen `TTEForEmbedding` folder whose retrieval is the reward.
        ecr_store (`str`): stored ECR of the sides that stay fixed (targets and negatives; queries for target-side
            rows), e.g. the teacher's.
        datasets (`list`): MMEB-format datasets, as for `train.distill_reasoner`.
        image_root (`str`, *optional*): folder the image paths are relative to.
        sides (`list[str]`, defaults to `["query"]`): which sides the policy writes ECR for.
        reward (`str`, defaults to `"probability"`): one of `train.rewards.REWARD_KINDS`.
        reward_temperature (`float`, *optional*): softmax temperature (default: the embedder's `loss_temperature`).
        num_negatives (`int`, defaults to 7): gold targets of other rows of the same dataset per row (seeded).
        in_batch_negatives (`bool`, defaults to `True`): the batch's other rows of the dataset are negatives too.
        format_weight (`float`, defaults to 0.1): weight of the ECR-format reward (0: left out).
        length_budget (`int`, *optional*): completion tokens beyond which the length penalty applies.
        length_weight (`float`, defaults to 0.0): weight of the length penalty (needs `length_budget`).
        homogeneous_batches (`bool`, defaults to `True`): every generation batch holds prompts of one dataset and
            side (so in-batch negatives are of the row's dataset, and image and text-only prompts, which TRL cannot
            generate in one batch, never meet); the prompts are ordered in seeded groups and TRL's shuffling is off.
        freeze_vision_tower (`bool`, defaults to `True`): keep the vision tower fixed.
        merge_lora (`bool`, defaults to `True`): with LoRA, save the merged weights.
        prompts (`str`, *optional*): reasoner prompt registry; default: the starting checkpoint's
            `reasoner_prompts.yaml` (a distilled student's), else the shipped one. Saved with the result.
    """

    embedder: str = field(metadata={"help": "the frozen TTE embedder folder giving the reward"})
    ecr_store: str = field(metadata={"help": "stored ECR of the fixed sides (targets, negatives)"})
    datasets: list[str] = field(default_factory=list, metadata={"help": "MMEB-format datasets (as distill_reasoner)"})
    image_root: str | None = field(default=None, metadata={"help": "image paths are relative to this folder"})
    sides: list[str] = field(default_factory=lambda: ["query"], metadata={"help": "query and/or target"})
    reward: str = field(default="probability", metadata={"help": f"one of {list(REWARD_KINDS)}"})
    reward_temperature: float | None = field(default=None, metadata={"help": "default: the embedder's"})
    num_negatives: int = field(default=7, metadata={"help": "sampled negatives per row from its dataset"})
    in_batch_negatives: bool = field(default=True, metadata={"help": "other rows of the batch are negatives"})
    format_weight: float = field(default=0.1, metadata={"help": "weight of the ECR-format reward"})
    length_budget: int | None = field(default=None, metadata={"help": "tokens before the length penalty"})
    length_weight: float = field(default=0.0, metadata={"help": "weight of the length penalty"})
    homogeneous_batches: bool = field(default=True, metadata={"help": "each generation batch from one dataset"})
    freeze_vision_tower: bool = field(default=True, metadata={"help": "freeze the vision tower"})
    merge_lora: bool = field(default=True, metadata={"help": "merge LoRA weights into the saved checkpoint"})
    prompts: str | None = field(default=None, metadata={"help": "reasoner prompt registry YAML"})

    def __post_init__(self):
        self.datasets = dataset_configs(self.datasets)
        if not self.datasets:
            raise ValueError("rl_reasoner needs at least one entry in `datasets`")
        if set(self.sides) - {"query", "target"} or not self.sides:
            raise ValueError(f"sides must be a non-empty subset of ['query', 'target'], got {self.sides}")
        if self.reward not in REWARD_KINDS:
            raise ValueError(f"reward must be one of {list(REWARD_KINDS)}, got {self.reward!r}")
        if self.length_weight and self.length_budget is None:
            raise ValueError("length_weight needs length_budget (the tokens a completion may use unpenalised)")


def _json_row(row: dict, ecr: str | None, where: str) -> dict:
    """A `TTEProcessor` row as JSON-ready values, with its stored ECR."""
    for key in ("image", "video"):
        media = row.get(key)
        if media is not None and not isinstance(media, str) and not (
                isinstance(media, list) and all(isinstance(m, str) for m in media)):
            raise ValueError(f"{where}: {key} must be a file path for RL (got {type(media).__name__}); decoded media "
                             "are not supported")
    return {**row, "ecr": ecr}


def _sides(store: ECRStore, pair: MMEBPair) -> tuple[dict | None, dict | None, list[dict]]:
    """The row's query, gold target and own negatives with their stored ECR (`None` for a side without)."""
    def stored(side_row, row_id, side):
        record = store.get(pair.dataset, row_id, side, content=side_row)
        return None if record is None else _json_row(side_row, record.ecr, f"{pair.dataset}/{row_id}/{side}")

    suffix = ECR_SIDES["negative"][2]
    own = [stored(neg, f"{pair.row_id}{suffix}", "target") for neg in pair.negatives]
    return stored(pair.query, pair.row_id, "query"), stored(pair.target, pair.row_id, "target"), \
        [n for n in own if n is not None]


def sampled_negatives(targets: list[dict | None], index: int, count: int, rng: random.Random) -> list[dict]:
    """Up to `count` gold targets of other rows (from `4 * count` draws), none equal to row `index`'s gold, none
    twice."""
    draws = (targets[rng.randrange(len(targets))] for _ in range(4 * count if len(targets) > 1 else 0))
    return distinct_targets(draws, targets[index], limit=count)


def rl_dataset(args: RLArguments, processor: TTEProcessor, seed: int = 0):
    """A `datasets.Dataset` of GRPO prompts (`prompt`, `images`) with the columns the retrieval reward reads
    (`dataset`, `row_id`, `side`, and JSON `query`, `target`, `negatives`) and `batch_group` (dataset, side and
    whether the prompt has an image: what a generation batch may not mix); rows whose fixed sides lack stored ECR
    are left out (counted in a warning)."""
    from datasets import Dataset, Image, Sequence

    store, examples, missing = ECRStore(args.ecr_store), [], 0
    for config in args.datasets:
        pairs = load_mmeb_pairs(config, image_root=args.image_root)
        sides = [_sides(store, pair) for pair in pairs]
        targets = [target for _, target, _ in sides]
        rng = random.Random(f"{seed}-{config.name}")
        for index, (pair, (query, target, own)) in enumerate(zip(pairs, sides, strict=True)):
            negatives = own + sampled_negatives(targets, index, args.num_negatives, rng) if target else []
            for side in args.sides:
                if target is None or (side == "target" and query is None) or not negatives:
                    missing += 1
                    continue
                query_row = query if query is not None else _json_row(pair.query, None, pair.dataset)
                example = prompt_example(processor, pair, side, config.task_type)
                group = f"{pair.dataset}/{side}/{'image' if example['images'] else 'text'}"
                examples.append({**example, "dataset": pair.dataset, "row_id": pair.row_id, "side": side,
                                 "batch_group": group, "query": json.dumps(query_row), "target": json.dumps(target),
                                 "negatives": json.dumps(negatives)})
    if missing:
        logger.warning(f"{missing} row sides lack stored ECR (or negatives) in {args.ecr_store} and are left out")
    if not examples:
        raise ValueError(f"no RL prompt: the store {args.ecr_store} has no ECR for the given datasets' fixed sides")
    return Dataset.from_list(examples).cast_column("images", Sequence(Image()))


def grouped_order(keys: list[str], group: int, seed: int) -> list[int]:
    """Row indices in groups of `group` rows of one key each (a key's last group is filled up with its own rows), the
    rows and the groups shuffled with `seed`: the order TRL's unshuffled sampler cuts into generation batches of
    `group` prompts."""
    rng, groups = random.Random(seed), []
    by_key: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        by_key.setdefault(key, []).append(index)
    for rows in by_key.values():
        rng.shuffle(rows)
        rows += [rows[i % len(rows)] for i in range(-len(rows) % group)]
        groups += [rows[start:start + group] for start in range(0, len(rows), group)]
    rng.shuffle(groups)
    return [index for chunk in groups for index in chunk]


def reward_functions(args: RLArguments, decoder: TraceDecoder, device=None) -> tuple[list, list[float]]:
    """The reward functions and their weights: retrieval (weight 1), format and length when weighted."""
    retrieval = RetrievalReward.from_pretrained(args.embedder, device=device, kind=args.reward,
                                                temperature=args.reward_temperature,
                                                in_batch_negatives=args.in_batch_negatives, decoder=decoder)
    functions, weights = [retrieval], [1.0]
    if args.format_weight:
        functions.append(FormatReward(decoder))
        weights.append(args.format_weight)
    if args.length_weight:
        functions.append(LengthPenalty(args.length_budget))
        weights.append(args.length_weight)
    return functions, weights


def build_trainer(args: RLArguments, training_args, model_args):
    r"""
    A configured (not subclassed) TRL `GRPOTrainer` for the reasoner.

    Args:
        args (`RLArguments`): data, reward and freezing options.
        training_args (`trl.GRPOConfig`): optimisation and sampling; `reward_weights` are set from `args`.
        model_args (`trl.ModelConfig`): the starting reasoner (`model_name_or_path`, `dtype`) and LoRA settings.
    """
    from accelerate import PartialState
    from trl import GRPOTrainer

    if not model_args.model_name_or_path:
        raise ValueError("rl_reasoner needs --model_name_or_path (the starting reasoner, e.g. the SFT student)")
    training_args.remove_unused_columns = False
    model, processor, peft_config = load_reasoner(model_args, args.freeze_vision_tower)
    prompts = backend_prompts(args.prompts, None, model_args.model_name_or_path)  # as generate_ecr asks it
    tte = TTEProcessor.from_backbone(model_args.model_name_or_path, prompts=prompts)
    with training_args.main_process_first(desc="building RL prompts"):
        dataset = rl_dataset(args, tte, seed=training_args.seed)
    if args.homogeneous_batches:
        group = training_args.generation_batch_size // training_args.num_generations
        dataset = dataset.select(grouped_order(dataset["batch_group"], group, training_args.seed))
        training_args.shuffle_dataset = False
    decoder = TraceDecoder(tte, {*end_of_turn_ids(model, tte.tokenizer), tte.tokenizer.pad_token_id} - {None})
    functions, training_args.reward_weights = reward_functions(args, decoder, PartialState().device)
    trainer = GRPOTrainer(model=model, reward_funcs=functions, args=training_args, train_dataset=dataset,
                          processing_class=processor, peft_config=peft_config)
    trainer.reasoner_prompts = prompts
    return trainer


def main(argv: list[str] | None = None) -> Path:
    """Train a reasoner with GRPO from a recipe; returns the saved checkpoint folder (with `reward_log.json`, the
    trainer's logged history: rewards per logging step)."""
    from trl import GRPOConfig, ModelConfig

    from train.cli import parse

    args, training_args, model_args = parse((RLArguments, GRPOConfig, ModelConfig), "train.rl_reasoner", __doc__,
                                            argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trainer = build_trainer(args, training_args, model_args)
    trainer.train()
    output_dir = save_student(trainer, merge_lora=args.merge_lora, prompts=trainer.reasoner_prompts)
    if trainer.is_world_process_zero():
        (output_dir / "reward_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        print(f"RL reasoner saved to {output_dir}; generate ECR with it: "
              f"python -m train.generate_ecr --model_name_or_path {output_dir} ...", flush=True)
    return output_dir


if __name__ == "__main__":
    main()
