"""Train a unified model's think router (`think="auto"`) from logged outcomes on training data.

    python -m train.train_router --model_name_or_path runs/tte-u --ecr_store ecr/tte-u-own \
        --datasets train/recipes/mixture_mmeb_v2.yaml --image_root /data/MMEB-train --output_dir runs/tte-u-routed

For each training row (at most `--max_rows` per dataset) the model embeds the query with its ECR and without, and
every target with its ECR; the gold target's reciprocal rank among `--pool_size` targets of the same dataset, with
and without thinking, is the logged outcome. The router (a linear probe on the query prompt's last-token state at
`--router_layer`, the state `generate_and_embed` has at the end of prefill) is fitted by logistic regression to
predict whether thinking raises the gold's reciprocal rank, each row weighted by how much it changes; rows where
thinking changes nothing carry no weight. `--router_threshold` (saved in the config) trades cost for quality.

The ECR store holds the model's own traces of the training rows, both sides, as `train.generate_ecr` writes them
with the model's backbone (for a TTE_u model: the reasoner it was built from) and the prompts saved with the model.
The output folder is the model with its router (`config.router_layer`, `router.*` weights) and `router_log.json`.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from train.ecr_store import ECRStore
from train.mmeb_data import MMEBPair, dataset_configs, load_mmeb_pairs

logger = logging.getLogger(__name__)


@dataclass
class RouterArguments:
    """Options of `python -m train.train_router`."""

    model_name_or_path: str = field(metadata={"help": "a unified TTEForEmbedding folder"})
    ecr_store: str = field(metadata={"help": "the model's own ECR of the training rows (queries and targets)"})
    datasets: list[str] = field(default_factory=list, metadata={
        "help": "MMEB-format datasets: JSON objects or recipe files (as for train.generate_ecr)"})
    image_root: str | None = field(default=None, metadata={"help": "image paths are relative to this folder"})
    output_dir: str = field(default="runs/tte-u-routed", metadata={"help": "where the model with its router goes"})
    router_layer: int = field(default=-1, metadata={"help": "hidden-state index the router reads (-1: final)"})
    router_threshold: float = field(default=0.5, metadata={
        "help": "think when the router's probability that thinking pays is at least this"})
    max_rows: int = field(default=2000, metadata={"help": "training rows read per dataset"})
    pool_size: int = field(default=64, metadata={"help": "targets of the same dataset each gold is ranked among"})
    batch_size: int = field(default=16, metadata={"help": "rows per forward"})
    steps: int = field(default=500, metadata={"help": "full-batch Adam steps of the logistic fit"})
    learning_rate: float = field(default=0.05, metadata={"help": "Adam learning rate of the fit"})
    weight_decay: float = field(default=1e-3, metadata={"help": "L2 penalty of the fit"})
    holdout: float = field(default=0.2, metadata={"help": "fraction of rows held out to report the router on"})
    seed: int = field(default=0, metadata={"help": "seed of the hold-out split"})
    device: str | None = field(default=None, metadata={"help": "default: cuda when available, else cpu"})

    def __post_init__(self):
        for name in ("max_rows", "pool_size", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be a fraction in [0, 1), got {self.holdout}")
        self.datasets = dataset_configs(self.datasets)
        if not self.datasets:
            raise ValueError("train_router needs at least one entry in `datasets`")


def stored_rows(store: ECRStore, pairs: list[MMEBPair]) -> tuple[list[dict], list[dict]]:
    """The queries and gold targets of `pairs` with their stored ECR; a missing trace names its row."""
    def with_ecr(pair: MMEBPair, side: str) -> dict:
        row = getattr(pair, side)
        record = store.get(pair.dataset, pair.row_id, side, content=row)
        if record is None:
            raise ValueError(f"{pair.dataset}/{pair.row_id}: no {side} ECR in the store {store.path}; generate the "
                             f"model's own ECR of the training rows first (train.generate_ecr)")
        return {**row, "ecr": record.ecr}
    return [with_ecr(p, "query") for p in pairs], [with_ecr(p, "target") for p in pairs]


def reciprocal_ranks(queries: torch.Tensor, targets: torch.Tensor, keys: list[str]) -> torch.Tensor:
    """Per query `i`, the reciprocal rank of target `i` among `targets`, where targets with the gold's content key
    (`keys`; e.g. the class of a classification row) count as the gold and other ties rank it last."""
    scores = queries.float() @ targets.float().T
    same = torch.tensor([[a == b for b in keys] for a in keys])
    ahead = (scores >= scores.diagonal()[:, None]) & ~same
    return 1.0 / (1 + ahead.sum(dim=1).float())


def content_key(row: dict) -> str:
    """What makes two targets the same candidate: their fields other than the ECR."""
    return json.dumps({k: v for k, v in row.items() if k != "ecr"}, sort_keys=True, default=str)


@torch.no_grad()
def log_outcomes(model, processor, pairs: list[MMEBPair], rows: tuple[list[dict], list[dict]], task_type: str,
                 args: RouterArguments) -> dict[str, torch.Tensor]:
    """Router features (prompt states) and reciprocal ranks with and without thinking, for one dataset's rows."""
    queries, targets = rows
    device = model.device

    def batches(items):
        return (items[i:i + args.batch_size] for i in range(0, len(items), args.batch_size))

    def embed(items, process):
        return torch.cat([model(**process(chunk).to(device)).embeddings for chunk in batches(items)])

    features = torch.cat([model.router_states(**processor.process_reasoner_inputs(
        [{k: v for k, v in q.items() if k != "ecr"} for q in chunk], task_type, "query",
        dataset=pairs[0].dataset).to(device)) for chunk in batches(queries)])
    thinking = embed(queries, processor.process_queries)
    plain = embed([{k: v for k, v in q.items() if k != "ecr"} for q in queries], processor.process_queries)
    gold = embed(targets, processor.process_targets)
    rr_with, rr_without, keys = [], [], [content_key(t) for t in targets]
    for start in range(0, len(pairs), args.pool_size):
        pool = slice(start, start + args.pool_size)
        rr_with.append(reciprocal_ranks(thinking[pool], gold[pool], keys[pool]))
        rr_without.append(reciprocal_ranks(plain[pool], gold[pool], keys[pool]))
    return {"features": features.float().cpu(), "with": torch.cat(rr_with).cpu(),
            "without": torch.cat(rr_without).cpu()}


def fit_router(features: torch.Tensor, gains: torch.Tensor, args: RouterArguments) -> nn.Linear:
    """Weighted logistic regression of `gains > 0` on standardised `features` (weights `|gains|`), folded back into
    one linear layer on the raw features."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    probe = nn.Linear(features.shape[1], 1)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.Adam(probe.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    labels, weights = (gains > 0).float(), gains.abs()
    for _ in range(args.steps):
        optimizer.zero_grad()
        logits = probe((features - mean) / std).squeeze(-1)
        loss = (weights * nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")).sum()
        (loss / weights.sum().clamp_min(1e-12)).backward()
        optimizer.step()
    folded = nn.Linear(features.shape[1], 1)
    with torch.no_grad():
        folded.weight.copy_(probe.weight / std)
        folded.bias.copy_(probe.bias - (probe.weight / std) @ mean)
    return folded


def routed_summary(probability: torch.Tensor, outcomes: dict, threshold: float) -> dict:
    """At `threshold`: the fraction of rows that think, the mean reciprocal rank routed, always and never thinking,
    and the weighted accuracy of the decision `thinking raises the reciprocal rank`."""
    thinks = probability >= threshold
    gains = outcomes["with"] - outcomes["without"]
    routed = torch.where(thinks, outcomes["with"], outcomes["without"])
    weights = gains.abs()
    right = ((gains > 0) == thinks).float()
    return {"rows": len(thinks), "think_fraction": thinks.float().mean().item(),
            "mrr_routed": routed.mean().item(), "mrr_always": outcomes["with"].mean().item(),
            "mrr_never": outcomes["without"].mean().item(),
            "weighted_accuracy": (weights * right).sum().item() / max(weights.sum().item(), 1e-12)}


def main(argv=None) -> dict:
    from modeling_tte import TTEForEmbedding
    from processing_tte import TTEProcessor
    from train.cli import parse

    (args,) = parse((RouterArguments,), "train.train_router", __doc__, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # the project's own classes; the folder's copies of them are not run
    model = TTEForEmbedding.from_pretrained(args.model_name_or_path, trust_remote_code=False).to(device).eval()
    processor = TTEProcessor.from_pretrained(args.model_name_or_path, trust_remote_code=False)
    model.add_router(args.router_layer, args.router_threshold)
    store, logged = ECRStore(args.ecr_store), defaultdict(list)
    for config in args.datasets:
        config.max_rows = min(config.max_rows or args.max_rows, args.max_rows)
        pairs = load_mmeb_pairs(config, args.image_root)
        logger.info("logging outcomes of %d rows of %s", len(pairs), config.name)
        outcome = log_outcomes(model, processor, pairs, stored_rows(store, pairs), config.task_type, args)
        for key, value in outcome.items():
            logged[key].append(value)
        logged["dataset"].append(torch.full((len(pairs),), len(logged["dataset"])))
    outcomes = {key: torch.cat(values) for key, values in logged.items()}
    order = list(range(len(outcomes["with"])))
    random.Random(args.seed).shuffle(order)
    held = torch.tensor(order[:int(args.holdout * len(order))], dtype=torch.long)
    fitted = torch.tensor(order[len(held):], dtype=torch.long)
    gains = outcomes["with"] - outcomes["without"]
    probe = fit_router(outcomes["features"][fitted], gains[fitted], args)
    with torch.no_grad():
        model.router.weight.copy_(probe.weight)
        model.router.bias.copy_(probe.bias)
        probability = model.router_probability(outcomes["features"].to(device)).cpu()
    split = {"fitted": fitted, "held_out": held}
    log = {name: routed_summary(probability[index], {k: v[index] for k, v in outcomes.items()},
                                args.router_threshold) for name, index in split.items() if len(index)}
    log["datasets"] = {config.name: routed_summary(probability[mask], {k: v[mask] for k, v in outcomes.items()},
                                                   args.router_threshold)
                       for number, config in enumerate(args.datasets)
                       for mask in [outcomes["dataset"] == number]}
    out = Path(args.output_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "router_log.json").write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    logger.info("router saved to %s: %s", out, json.dumps(log.get("held_out", log["fitted"])))
    return log


if __name__ == "__main__":
    main()
