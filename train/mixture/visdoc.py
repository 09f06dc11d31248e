"""Visual-document training sources as query -> page image pairs: `vidore/colpali_train_set` (columns `query`,
`image`, `answer`, `source`, ...) and `openbmb/VisRAG-Ret-Train-In-domain-data` (`query`, `image`, `source`), split
`train`, the page in the parquet's `image` column (a `datasets.Image` feature).

Pages are read undecoded and written once each, content-addressed, to `<cache_dir>/pages/<sha256>.<format>`
(`train.pages`), so no page is ever held decoded and the rows carry only paths. Query: the text with the MMEB-V2
visual-document instruction (`spec.instruction` overrides it); target: the page with the candidate instruction
(`spec.target_instruction`). Row id: the row's index in the split (these tables have no id column).

The reference's `vidore_dataset.py` pairs page + query with the *answer* text instead, and its `visrag_dataset.py`
prefixes a per-`source` prompt on both sides; these readers keep one retrieval direction for both, the way the
MMEB-V2 visual-document tasks are evaluated (see the report of issue 12).
"""

from __future__ import annotations

from datasets import Image

from train.pages import page_file
from train.tables import read_training_table

from .schema import FEATURES, ReadContext, require_columns, training_row

QUERY_INSTRUCTION = "Find a document image that matches the given query:"
TARGET_INSTRUCTION = "Understand the content of the provided document image."


def read_pages(spec, context: ReadContext):
    """The query -> page rows of a visual-document training table (`spec.path`, `spec.split`)."""
    table = read_training_table(spec.path, spec.subset, spec.split, name=spec.name, data_root=context.data_root,
                                hub_cache=context.hub_cache)
    require_columns(table, ("query", "image"), spec.name, spec.path)
    table = table.select_columns(["query", "image"]).cast_column("image", Image(decode=False))
    folder, name = context.pages, spec.name
    instruction = QUERY_INSTRUCTION if spec.instruction is None else spec.instruction
    target = TARGET_INSTRUCTION if spec.target_instruction is None else spec.target_instruction

    def convert(row: dict, index: int) -> dict:
        where = f"dataset {name!r} row {index}"
        query = row["query"]
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"{where}: column 'query' must be a non-empty string, got {query!r:.80}")
        page = page_file(row["image"], folder, where)
        return training_row(name, str(index), qry_instruction=instruction, qry_text=query.strip(),
                            pos_text=target, pos_image=str(page))

    return table.map(convert, with_indices=True, remove_columns=table.column_names, features=FEATURES,
                     writer_batch_size=100, load_from_cache_file=False, desc=f"Writing the pages of {name}")
