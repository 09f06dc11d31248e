"""What a loaded MMEB task is: queries (with their labels and, for local tasks, their own candidates) and the
task's candidate pool, each a `TTEProcessor` row (`image`, `video`, `text`, `instruction`).

The pool follows the reference (`generate_cand_dataset`): every row's candidates in row order, then the rest of
the corpus, one entry per candidate *name*, the first row of a name winning. A local query keeps its candidate
list as given, duplicates included (each takes a rank slot, as in the reference).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from eval.tasks import TaskSpec


@dataclass
class EvalQuery:
    """One query row.

    Args:
        row_id (`str`): the row's id in the task (its index, or the BEIR `query-id`); the ECR store key.
        row (`dict`): the processor row of the query.
        relevance (`dict[str, float]`): label (candidate name) -> graded relevance, pairs kept together.
        candidates (`list[str]`, *optional*): this row's candidate names in order, duplicates kept (local tasks);
            `None` ranks the whole pool (global tasks).
    """

    row_id: str
    row: dict
    relevance: dict[str, float]
    candidates: list[str] | None = None


@dataclass
class TaskData:
    """A loaded task: its queries and its candidate pool (name -> processor row, in pool order)."""

    spec: TaskSpec
    queries: list[EvalQuery] = field(default_factory=list)
    corpus: dict[str, dict] = field(default_factory=dict)

    def add_candidate(self, name: str, row: dict) -> str:
        """Register a candidate once per name (the first row of a name wins) and return the name."""
        self.corpus.setdefault(name, row)
        return name

    def add_query(self, row_id, row: dict, relevance: dict[str, float], candidates: list[str] | None) -> EvalQuery:
        """Append a query; its labels must be among its candidates (local) or in the pool (global)."""
        if not relevance:
            raise TaskDataError(f"task {self.spec.name} row {row_id}: no gold candidate")
        query = EvalQuery(str(row_id), row, dict(relevance), None if candidates is None else list(candidates))
        self.queries.append(query)
        return query

    def check(self) -> TaskData:
        """Raise when the task is empty, a local candidate is not in the pool, or a global query's label is not in
        the pool. A local query's label may be missing from its candidates: the reference scores it as a miss
        (MVBench's "(@) ..." gold, an SSv2 row whose neg_text lacks pos_text)."""
        if not self.queries:
            raise TaskDataError(f"task {self.spec.name}: no query rows")
        for query in self.queries:
            names = query.candidates if query.candidates is not None else list(query.relevance)
            unknown = [n for n in names if n not in self.corpus]
            if unknown:
                raise TaskDataError(f"task {self.spec.name} row {query.row_id}: candidate(s) {unknown[:3]} are not "
                                    f"in the candidate pool")
        return self


class TaskDataError(ValueError):
    """Malformed task data; the message names the task and the row."""


def resolve_file(root: Path | None, path, where: str, folder: bool = False) -> Path:
    """`path` (absolute, or relative to `root`) as an existing file (or, with `folder`, directory); a
    `FileNotFoundError` naming `where` and the full path otherwise."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TaskDataError(f"{where}: expected a media path, got {path!r:.80}")
    full = Path(path) if root is None or Path(path).is_absolute() else Path(root) / path
    if not (full.is_dir() if folder else full.is_file()):
        raise FileNotFoundError(f"{where}: {'folder' if folder else 'file'} not found: {full}")
    return full
