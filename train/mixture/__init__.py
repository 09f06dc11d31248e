"""The VLM2Vec-V2 training mixture: one reader per source family, all yielding the training-row schema of
`train.mixture.schema`, picked by a spec's `parser` (the reference's `dataset_parser` names).

| parser | source | rows | default task type |
|---|---|---|---|
| `mmeb` | `TIGER-Lab/MMEB-train` (20 subsets) | as stored (image/text -> image/text) | `retrieval` |
| `vidore` | `vidore/colpali_train_set` | query -> page image | `visual_document` |
| `visrag` | `openbmb/VisRAG-Ret-Train-In-domain-data` | query -> page image | `visual_document` |
| `llavahound_caption` | LLaVA-Hound `video_caption_300k` | video -> caption, or caption -> video (`mode`) | `video` |
| `llavahound_qa` | LLaVA-Hound `video_qa_240k` | video + question -> answer | `video` |

    from train.data import load_dataset_specs, load_mmeb_train
    rows = load_mmeb_train(load_dataset_specs("train/recipes/mixture_mmeb_v2.yaml"))
"""

from __future__ import annotations

from . import llavahound, mmeb_train, visdoc
from .schema import COLUMNS, FEATURES, ReadContext, check_unique_ids, row_id_of, training_row

READERS = {"mmeb": mmeb_train.read, "vidore": visdoc.read_pages, "visrag": visdoc.read_pages,
           "llavahound_caption": llavahound.read_caption, "llavahound_qa": llavahound.read_qa}
DEFAULT_TASK_TYPES = {"mmeb": "retrieval", "vidore": "visual_document", "visrag": "visual_document",
                      "llavahound_caption": "video", "llavahound_qa": "video"}


def read_source(spec, context: ReadContext | None = None):
    """Every training row of one source (`spec.parser`), before caps and weights, as a `datasets.Dataset` with the
    columns `COLUMNS`; row ids checked unique."""
    if spec.parser not in READERS:
        raise ValueError(f"dataset {spec.name!r}: parser must be one of {sorted(READERS)}, got {spec.parser!r}")
    rows = READERS[spec.parser](spec, context or ReadContext())
    check_unique_ids(rows["row_id"], spec.name)
    return rows


__all__ = ["COLUMNS", "DEFAULT_TASK_TYPES", "FEATURES", "READERS", "ReadContext", "check_unique_ids", "read_source",
           "row_id_of", "training_row"]
