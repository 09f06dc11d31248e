"""Length-bucketed encoding: rows processed once, batched by length, returned in their original order, equal to
naive fixed-order batching."""

import pytest
import torch

from eval.encode import Encoder
from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor
from tests.helpers import mixed_rows, solid
from train.batching import length_sorted_batches, pad_features

LONG = "<think>" + " ".join(["the red circle is left of the blue square"] * 30) + "</think> Answer: red"


def varied_rows() -> list[dict]:
    """Image, video and text-only rows whose token lengths range from ~17 to ~290, in no length order."""
    return [
        *mixed_rows(),
        {"text": "blue", "ecr": LONG},
        {"image": solid("green", 64), "text": "a big card", "ecr": "Answer: green"},
        {"text": "x"},
        {"video": [solid("white"), solid("black")], "ecr": LONG[:300]},
        {"image": solid("yellow", 48), "instruction": "Find it.", "ecr": LONG[:900]},
        {"text": "a long caption " * 20},
    ]


@pytest.fixture(scope="module")
def model_and_processor(tiny_qwen2_vl):
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl).eval()
    return model, TTEProcessor.from_backbone(tiny_qwen2_vl)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pad_features_equals_the_processor_batch(model_and_processor, padding_side):
    _, processor = model_and_processor
    rows = varied_rows()
    whole = processor.process_queries(rows, padding_side=padding_side)
    joined = pad_features([processor.process_queries([row]) for row in rows], processor.tokenizer.pad_token_id,
                          padding_side=padding_side)
    assert set(joined) == set(whole)
    for key in whole:
        assert torch.equal(joined[key], whole[key]), key


def test_length_sorted_batches_cover_every_row_once():
    lengths = [5, 40, 7, 40, 1, 22, 9]
    batches = length_sorted_batches(lengths, 3)
    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert sorted(i for batch in batches for i in batch) == list(range(7))
    assert [[lengths[i] for i in batch] for batch in batches] == [[40, 40, 22], [9, 7, 5], [1]]
    assert batches[0][:2] == [1, 3]  # ties keep their input order
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches(lengths, 0)


@pytest.mark.parametrize("window", [None, 5], ids=["one-window", "windows-of-5"])
@pytest.mark.parametrize("side", ["query", "target"])
def test_bucketed_encoding_keeps_order_and_equals_naive(model_and_processor, side, window):
    model, processor = model_and_processor
    rows = varied_rows()
    lengths = [processor.process_queries([row])["input_ids"].shape[1] for row in rows]
    assert min(lengths) < 40 and max(lengths) > 250  # very different lengths, in no sorted order
    assert lengths != sorted(lengths) and lengths != sorted(lengths, reverse=True)
    bucketed = Encoder(model, processor, batch_size=3, window=window)
    naive = Encoder(model, processor, batch_size=3, bucket=False)
    fast, slow = bucketed.encode(rows, side), naive.encode(rows, side)
    assert fast.shape == slow.shape == (len(rows), 64)
    assert bucketed.num_encoded == naive.num_encoded == len(rows)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    one_by_one = torch.cat([naive.encode([row], side) for row in rows])
    torch.testing.assert_close(fast, one_by_one, atol=1e-5, rtol=0)
    distances = torch.cdist(fast, fast) + torch.eye(len(rows)) * 10
    assert distances.min() > 1e-3  # every row has its own embedding, so a mixed-up order would show


def test_bucketed_encoding_names_a_bad_row(model_and_processor, tmp_path):
    model, processor = model_and_processor
    rows = [{"text": "fine"}, {"image": str(tmp_path / "missing.png")}]
    with pytest.raises(FileNotFoundError, match="row 1 of this batch.*missing.png"):
        Encoder(model, processor).encode(rows, "query")
    assert Encoder(model, processor).encode([], "query").numel() == 0


def test_attention_and_dtype_flags(tiny_qwen2_vl):
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    rows = varied_rows()[:4]
    reference = Encoder(TTEForEmbedding.from_backbone(tiny_qwen2_vl), processor).encode(rows, "query")
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl)
    eager = Encoder(model, processor, attn_implementation="eager")
    assert model.vlm.config._attn_implementation == "eager"
    torch.testing.assert_close(eager.encode(rows, "query"), reference, atol=1e-5, rtol=0)
    half = Encoder(model, processor, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    embeddings = half.encode(rows, "query")
    assert embeddings.dtype == torch.float32 and (embeddings - reference).abs().max() < 0.05
