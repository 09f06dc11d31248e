"""Write the synthetic benchmark to disk: MMEB-V2 image-format test tasks, MMEB-train-format training sets, and
the oracle teacher's ECR for both, so the project's real loaders, trainers and harness read it.

    python -m eval.synthetic.write --output_dir runs/synthetic --train 600 --test 100 --seed 0

Layout under `--output_dir`:
    eval/<task>.jsonl         qry_inst, qry_text, qry_img_path, tgt_inst, tgt_text[], tgt_img_path[] (gold first)
    train/<task>.jsonl        qry (with <|image_1|>), qry_image_path, pos_text, pos_image_path
    eval|train/images/<task>/ the rendered scenes and card crops
    ecr-teacher/              ECR store: eval queries (task, row, query) and candidates (task, candidate name,
                              target); training rows (<task>.train, row, query|target)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from eval.mmeb.image import candidate_name
from eval.synthetic.scenes import render_card
from eval.synthetic.tasks import TASKS, Example, Target, teach_target
from eval.tasks import all_tasks
from processing_tte import parse_ecr
from train.ecr_store import ECRRecord, ECRStore, prompt_hash

TEACHER = "oracle-teacher"


def train_dataset_name(task: str) -> str:
    return f"{task}.train"


def _save_target(target: Target, folder: Path, stem: str, root: Path) -> tuple[str, str]:
    """`(text, image path relative to root)` of a candidate, rendering its image if it has one."""
    image = target.scene.render() if target.scene is not None else (
        render_card(target.card).resize((32, 32)) if target.card is not None else None)
    if image is None:
        return target.text, ""
    path = folder / f"{stem}.png"
    image.save(path)
    return target.text, str(path.relative_to(root))


def _record(dataset: str, row_id: str, side: str, ecr: str) -> ECRRecord:
    return ECRRecord(dataset, row_id, side, ecr, parse_ecr(ecr).answer, TEACHER, prompt_hash(ecr))


def _query_image(example: Example, folder: Path, stem: str, root: Path) -> str:
    if example.scene is None:
        return ""
    path = folder / f"{stem}.png"
    example.scene.render().save(path)
    return str(path.relative_to(root))


def write_eval_task(task, examples: list[Example], root: Path) -> list[ECRRecord]:
    """Write `<root>/<task>.jsonl` (MMEB-V2 image format) and return the teacher's ECR records, candidates keyed by
    the name the image loader gives them (`eval.mmeb.image.candidate_name` for the task's parser)."""
    folder = root / "images" / task.name
    folder.mkdir(parents=True, exist_ok=True)
    rows, records, parser = [], [], all_tasks("synthetic")[task.name].parser
    for i, example in enumerate(examples):
        texts, paths = zip(*(_save_target(t, folder, f"r{i}_c{j}", root) for j, t in enumerate(example.candidates)),
                           strict=True)
        rows.append({"qry_inst": task.instruction, "qry_text": example.text,
                     "qry_img_path": _query_image(example, folder, f"r{i}_q", root),
                     "tgt_inst": "", "tgt_text": list(texts), "tgt_img_path": list(paths)})
        records.append(_record(task.name, str(i), "query", task.teach(example.scene, example.params)))
        for text, path, target in zip(texts, paths, example.candidates, strict=True):
            records.append(_record(task.name, candidate_name(parser, text, path), "target", teach_target(target)))
    _write_jsonl(root / f"{task.name}.jsonl", rows)
    return records


def write_train_task(task, examples: list[Example], root: Path) -> list[ECRRecord]:
    """Write `<root>/<task>.jsonl` (MMEB-train format, the gold candidate as positive) and its teacher records."""
    folder = root / "images" / task.name
    folder.mkdir(parents=True, exist_ok=True)
    rows, records, dataset = [], [], train_dataset_name(task.name)
    for i, example in enumerate(examples):
        image = _query_image(example, folder, f"r{i}_q", root)
        query = "\n".join(part for part in (task.instruction, example.text) if part)
        pos_text, pos_image = _save_target(example.candidates[0], folder, f"r{i}_pos", root)
        rows.append({"qry": ("<|image_1|>" if image else "") + query, "qry_image_path": image,
                     "pos_text": pos_text, "pos_image_path": pos_image})
        records.append(_record(dataset, str(i), "query", task.teach(example.scene, example.params)))
        records.append(_record(dataset, str(i), "target", teach_target(example.candidates[0])))
    _write_jsonl(root / f"{task.name}.jsonl", rows)
    return records


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def write_benchmark(out, num_train: int = 600, num_test: int = 100, seed: int = 0, tasks=None) -> Path:
    """Generate and write every task (train and test scenes drawn from separate seeded streams). Returns `out`."""
    out = Path(out)
    store = ECRStore(out / "ecr-teacher")
    for index, name in enumerate(tasks or TASKS):
        task = TASKS[name]
        train_rng, test_rng = random.Random(f"{seed}-{index}-train"), random.Random(f"{seed}-{index}-test")
        store.add(write_train_task(task, [task.make(train_rng) for _ in range(num_train)], out / "train"))
        store.add(write_eval_task(task, [task.make(test_rng) for _ in range(num_test)], out / "eval"))
    return out


@dataclass
class SyntheticArguments:
    """Options of `python -m eval.synthetic.write`."""

    output_dir: str = field(metadata={"help": "folder the benchmark is written to"})
    train: int = field(default=600, metadata={"help": "training rows per task"})
    test: int = field(default=100, metadata={"help": "test rows per task"})
    seed: int = field(default=0, metadata={"help": "seed of the scenes"})


def main(argv=None) -> None:
    from train.cli import parse

    (args,) = parse((SyntheticArguments,), "eval.synthetic.write", __doc__, argv)
    print(write_benchmark(args.output_dir, args.train, args.test, args.seed))


if __name__ == "__main__":
    main()
