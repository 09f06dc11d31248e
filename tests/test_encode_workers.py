"""Preprocessing in DataLoader worker processes (`num_workers > 0`): the same embeddings and ECR as in the main
process, for image files, frame folders, text and PIL images in memory; bad rows named as without workers."""

import os
import pickle

import pytest
import torch
from PIL import Image

from eval.cache import EmbeddingCache
from eval.encode import Encoder
from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor
from tests.helpers import solid
from train.batching import map_chunks
from train.generate_ecr import ECRRequest, LocalBackend

LONG = "<think>" + " ".join(["the red circle is left of the blue square"] * 12) + "</think> Answer: red"


def media_rows(folder) -> list[dict]:
    """Image files, a frame folder, frames in memory, PIL images in memory, text; lengths in no order."""
    frames = folder / "frames"
    frames.mkdir()
    for index, colour in enumerate(["red", "green", "blue"]):
        solid(colour, 40).save(frames / f"{index:03d}.png")
    for colour in ("yellow", "white"):
        Image.new("RGB", (64, 48), colour).save(folder / f"{colour}.png")
    return [
        {"image": str(folder / "yellow.png"), "text": "a card", "ecr": LONG},
        {"text": "x"},
        {"video": str(frames), "text": "what happens", "ecr": "Answer: colours"},
        {"image": solid("black", 48), "instruction": "Find it.", "ecr": LONG[:200]},
        {"video": [solid("pink"), solid("brown")], "ecr": LONG[:120]},
        {"text": "a long caption " * 15, "instruction": "Represent the text."},
        {"image": str(folder / "white.png")},
        {"image": solid("orange", 32), "text": "orange"},
        {"text": "two squares", "ecr": "<think>two</think> Answer: 2"},
    ]


@pytest.fixture(scope="module")
def model_and_processor(tiny_qwen2_vl):
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl).eval()
    return model, TTEProcessor.from_backbone(tiny_qwen2_vl)


def test_map_chunks_in_order_in_other_processes():
    items = list(range(11))
    here = list(map_chunks(_tag, items, 3))
    there = list(map_chunks(_tag, items, 3, num_workers=2))
    assert [chunk for chunk, _ in here] == [chunk for chunk, _ in there] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    assert {pid for _, pid in here} == {os.getpid()}
    assert len({pid for _, pid in there}) == 2 and os.getpid() not in {pid for _, pid in there}
    with pytest.raises(ValueError, match="num_workers"):
        map_chunks(_tag, items, 3, num_workers=-1)


def _start(chunk, start):
    return start


def _tag(chunk, start):
    assert chunk[0] == start
    return chunk, os.getpid()


@pytest.mark.parametrize("side", ["query", "target"])
def test_two_workers_give_the_same_embeddings(model_and_processor, tmp_path, side):
    model, processor = model_and_processor
    rows = media_rows(tmp_path)
    reference = Encoder(model, processor, batch_size=2, window=4).encode(rows, side)
    workers = Encoder(model, processor, batch_size=2, window=4, num_workers=2)
    assert type(workers._processed(rows, _start).results).__name__ == "_MultiProcessingDataLoaderIter"  # workers
    assert torch.equal(workers.encode(rows, side), reference)  # bitwise: the same inputs, the same batches
    assert workers.num_encoded == len(rows) and workers._buffers.buffers  # shared memory kept for the next call
    reverse = Encoder(model, processor, batch_size=2, window=4).encode(rows[::-1], side)
    assert torch.equal(workers.encode(rows[::-1], side), reverse)  # new workers, the same buffers
    assert torch.equal(workers.encode(rows, side), reference)
    naive = Encoder(model, processor, batch_size=2, bucket=False)
    naive_workers = Encoder(model, processor, batch_size=2, bucket=False, num_workers=2)
    assert torch.equal(naive_workers.encode(rows, side), naive.encode(rows, side))
    torch.testing.assert_close(reference, naive.encode(rows, side), atol=1e-5, rtol=0)


def test_fill_with_workers_writes_every_row(model_and_processor, tmp_path):
    model, processor = model_and_processor
    rows = media_rows(tmp_path)
    items = {f"key{index}": row for index, row in enumerate(rows)}
    cache = EmbeddingCache(tmp_path / "cache")
    Encoder(model, processor, batch_size=2, window=4, num_workers=2).fill(cache, items, "query", flush_every=3)
    cache.reload()
    expected = Encoder(model, processor, batch_size=2, window=4).encode(rows, "query")
    assert torch.equal(cache.stack(list(items)), expected)


def test_pil_rows_pickled_into_spawned_workers(model_and_processor):
    model, processor = model_and_processor
    rows = [{"image": solid("red", 40), "text": "red"}, {"video": [solid("blue"), solid("green")]},
            {"image": Image.new("RGB", (48, 32), "purple"), "ecr": "Answer: purple"}]
    again = pickle.loads(pickle.dumps(rows))
    assert again[0]["image"].tobytes() == rows[0]["image"].tobytes()
    reference = Encoder(model, processor, batch_size=2).encode(rows, "query")
    spawned = Encoder(model, processor, batch_size=2, num_workers=1, multiprocessing_context="spawn")
    assert torch.equal(spawned.encode(rows, "query"), reference)


def test_a_bad_row_in_a_worker_is_named(model_and_processor, tmp_path):
    model, processor = model_and_processor
    rows = media_rows(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    encoder = Encoder(model, processor, batch_size=2, window=4, num_workers=2)
    with pytest.raises(FileNotFoundError, match="row 6 of this batch.*missing.png"):
        encoder.encode([*rows[:6], {"image": str(tmp_path / "missing.png")}, *rows[6:]], "query")
    with pytest.raises(ValueError, match=r"row 2 of this batch: query row 0.*broken.png"):
        encoder.encode([*rows[:2], {"image": str(tmp_path / "broken.png")}], "query")
    with pytest.raises(ValueError, match="num_workers"):
        Encoder(model, processor, num_workers=-1)


def requests(folder) -> list[ECRRequest]:
    rows = media_rows(folder)[:7] + [{"image": str(folder / "missing.png"), "text": "gone"}]
    return [ECRRequest("demo", str(index), "query", row, "vqa") for index, row in enumerate(rows)]


def test_local_backend_two_workers_give_the_same_ecr(tiny_qwen2_vl, tmp_path):
    batch = requests(tmp_path)
    main = LocalBackend(tiny_qwen2_vl, max_new_tokens=6, batch_size=3)
    main.check()
    workers = LocalBackend(main.model, main.processor, max_new_tokens=6, batch_size=3, num_workers=2)
    workers.check()
    expected, got = main.generate(batch), workers.generate(batch)
    assert [(o.text, o.num_tokens, o.prompt_hash, o.error) for o in got] == \
        [(o.text, o.num_tokens, o.prompt_hash, o.error) for o in expected]
    assert all(o.error is None and o.num_tokens > 0 for o in got[:-1])
    assert "FileNotFoundError" in got[-1].error and "missing.png" in got[-1].error
    assert workers.generated_rows == main.generated_rows == len(batch) - 1


@pytest.mark.parametrize("flag", ["--num-workers", "--num_workers"])
def test_num_workers_flags_reach_encoder_and_backend(flag, tmp_path):
    from eval.run_mmeb import parse_args, reasoner_backend
    from train.cli import parse
    from train.generate_ecr import GenerateECRArguments, make_backend

    args = parse_args(["--tasks", "all", "--reasoner", "m", "--check_data", flag, "2"])
    assert args.num_workers == 2 and reasoner_backend(args, type("S", (), {"device": "cpu"})).num_workers == 2
    datasets = '{"name": "d", "path": "d.jsonl"}'
    (parsed,) = parse((GenerateECRArguments,), "train.generate_ecr", None,
                      ["--model", "m", "--store", str(tmp_path), "--datasets", datasets, flag, "2"])
    assert make_backend(parsed).num_workers == 2
    with pytest.raises(ValueError, match="num_workers must be 0 or more"):
        GenerateECRArguments(ecr_store="s", model_name_or_path="m", datasets=[{"name": "d", "path": "d.jsonl"}],
                             num_workers=-1)
