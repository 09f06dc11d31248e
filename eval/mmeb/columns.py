"""Strict reads of annotation columns: a value of the wrong type is an error naming the task, row and column,
never a silent change (a string where a list belongs would become one candidate per character; a NaN would drop
an instruction)."""

from __future__ import annotations

import math

from eval.data import TaskDataError


def _where(task: str, index, column: str) -> str:
    return f"task {task} row {index} column {column!r}"


def text(record: dict, column: str, task: str, index, default: str | None = None) -> str:
    """The string in `column`; `default` (when given) for a missing or `None` value."""
    value = record.get(column)
    if value is None and default is not None:
        return default
    if isinstance(value, float) and math.isnan(value):
        raise TaskDataError(f"{_where(task, index, column)}: NaN where a string belongs")
    if not isinstance(value, str):
        if value is None and column in record:
            raise TaskDataError(f"{_where(task, index, column)}: null (a NaN or missing value) where a string belongs")
        if value is None:
            raise TaskDataError(f"{_where(task, index, column)}: missing (columns: {sorted(record)})")
        raise TaskDataError(f"{_where(task, index, column)}: expected a string, got {type(value).__name__} "
                            f"{value!r:.80}")
    return value


def text_list(record: dict, column: str, task: str, index, allow_empty: bool = False) -> list[str]:
    """The list of strings in `column` (a bare string is an error, not a list of characters)."""
    value = record.get(column)
    if value is None:
        raise TaskDataError(f"{_where(task, index, column)}: missing (columns: {sorted(record)})")
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TaskDataError(f"{_where(task, index, column)}: expected a list of strings, got "
                            f"{type(value).__name__} {value!r:.80}")
    items = [text({column: v}, column, task, index) for v in value]
    if not items and not allow_empty:
        raise TaskDataError(f"{_where(task, index, column)}: empty list")
    return items


def require(record: dict, columns, task: str, index) -> None:
    """Raise naming every missing column of `columns`."""
    missing = [c for c in columns if c not in record]
    if missing:
        raise TaskDataError(f"task {task} row {index}: missing column(s) {missing} (has {sorted(record)})")
