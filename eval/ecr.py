"""ECR (reasoning traces) for evaluation rows: read from the ECR store, generated through one late-imported seam
into `train.generate_ecr` when records are missing and a reasoner backend is given."""

from __future__ import annotations

from eval.data import TaskData
from train.ecr_store import ECRStore, StaleECRError, ecr_key

ECR_MODES = ("full", "answer_only", "none")


class MissingECRError(LookupError):
    """The ECR store lacks records for a task and no reasoner backend was given."""


def ecr_keys(data: TaskData) -> list[tuple[str, str, str]]:
    """Store keys of a task: `(task name, query row id, "query")` and `(task name, candidate name, "target")`."""
    name = data.spec.name
    return ([ecr_key(name, q.row_id, "query") for q in data.queries]
            + [ecr_key(name, cand, "target") for cand in data.corpus])


def evaluation_requests(data: TaskData, keys) -> list:
    """The `train.generate_ecr.ECRRequest`s of a task's store `keys`: the task's name as the dataset (so the
    reasoner is asked the task's prompt) and never a hint (the ground truth is for teacher runs on training data)."""
    from train.generate_ecr import ECRRequest

    rows = {"query": {q.row_id: q.row for q in data.queries}, "target": data.corpus}
    return [ECRRequest(dataset, row_id, side, rows[side][row_id], data.spec.task_type)
            for dataset, row_id, side in keys]


def generate_missing_ecr(data: TaskData, missing, store: ECRStore, backend, batch_size: int = 16,
                         show_progress: bool = True):
    """The seam to ECR generation: `evaluation_requests` for the `missing` keys, run by
    `train.generate_ecr.run_generation`, which writes the records into `store`. Returns its report."""
    from train.generate_ecr import run_generation

    return run_generation(evaluation_requests(data, missing), store, backend, batch_size=batch_size,
                          show_progress=show_progress)


def _lookup(data: TaskData, store: ECRStore) -> tuple[dict, list, list]:
    """`(ECR by key, stale keys, missing keys)`: a record counts only when it was written for the row's content."""
    name = data.spec.name
    rows = [(ecr_key(name, q.row_id, "query"), q.row) for q in data.queries]
    rows += [(ecr_key(name, cand, "target"), row) for cand, row in data.corpus.items()]
    found, stale, missing = {}, [], []
    for key, row in rows:
        try:
            record = store.get(*key, content=row)
        except StaleECRError:
            stale.append(key)
            continue
        if record is None:
            missing.append(key)
        else:
            found[key] = record.ecr
    return found, stale, missing


def _shown(keys) -> str:
    return ", ".join(f"{side} row {row_id!r}" for _, row_id, side in keys[:3])


def attach_ecr(data: TaskData, store: ECRStore | None, ecr_mode: str = "full", backend=None,
               batch_size: int = 16, rank: int = 0, world: int = 1, barrier=lambda: None) -> TaskData:
    """Put each query's and candidate's ECR into its row (`row["ecr"]`), in place.

    `ecr_mode="none"` is the no-ECR baseline: rows get no ECR and no store is needed. Otherwise records come from
    `store`, and only records written for the row's content count (a record of another row, e.g. after rows were
    inserted, is stale). Missing and stale ones are generated with `backend` when given (each of `world` processes
    generates its share into its own part of the store), else `MissingECRError` names the task and rows.
    """
    if ecr_mode not in ECR_MODES:
        raise ValueError(f"ecr_mode must be one of {list(ECR_MODES)}, got {ecr_mode!r}")
    if ecr_mode == "none":
        return data
    name = data.spec.name
    if store is None:
        raise MissingECRError(f"task {name}: ecr_mode={ecr_mode!r} needs an ECR store; pass one (--ecr_store) or use "
                              f"ecr_mode='none' for the no-ECR baseline")
    barrier()  # every process sees the same store before splitting the missing records
    store.reload()
    found, stale, missing = _lookup(data, store)
    if (stale or missing) and backend is not None:
        generate_missing_ecr(data, (missing + stale)[rank::world], store, backend, batch_size, show_progress=rank == 0)
        barrier()
        store.reload()
        found, stale, missing = _lookup(data, store)
    total = len(data.queries) + len(data.corpus)
    if stale:
        raise MissingECRError(f"task {name}: {len(stale)} of {total} ECR records in {store.path} were written for "
                              f"other rows or content (e.g. {_shown(stale)}); regenerate them with a reasoner backend")
    if missing:
        raise MissingECRError(f"task {name}: {len(missing)} of {total} ECR records are missing from the store "
                              f"{store.path} (e.g. {_shown(missing)}); give a reasoner backend to generate them, or "
                              f"use ecr_mode='none' for the no-ECR baseline")
    for query in data.queries:
        query.row["ecr"] = found[ecr_key(name, query.row_id, "query")]
    for cand, row in data.corpus.items():
        row["ecr"] = found[ecr_key(name, cand, "target")]
    return data
