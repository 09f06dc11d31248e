"""Issue 13, model side: inputs that would embed silently wrong are refused, the pooled token is the end-of-turn
token, and each QFormer block reads its own backbone layer."""

from __future__ import annotations

import pytest
import torch

from modeling_tte import TTEForEmbedding, last_token_pool
from processing_tte import TTEProcessor
from tests.helpers import mixed_rows, solid


@pytest.fixture(scope="module")
def processor(tiny_qwen2_vl):
    return TTEProcessor.from_backbone(tiny_qwen2_vl)


@pytest.fixture(scope="module")
def embedder(tiny_qwen2_vl):
    return TTEForEmbedding.from_backbone(tiny_qwen2_vl, normalize=False).eval()


# ---------------------------------------------------------------- B: forward without checks
def test_image_tokens_without_pixel_values_are_refused(processor, embedder):
    batch = processor.process_queries([{"image": solid("red"), "text": "x"}, {"text": "y"}])
    with pytest.raises(ValueError, match=r"input_ids hold 4 image tokens \(id \d+\) but no `pixel_values`"):
        embedder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    video = processor.process_queries([{"video": [solid("red"), solid("blue")], "text": "x"}])
    without = {k: v for k, v in video.items() if k != "pixel_values_videos"}
    with pytest.raises(ValueError, match=r"video tokens .* but no `pixel_values_videos`"):
        embedder(**without)
    with torch.no_grad():
        assert embedder(**batch).embeddings.shape == (2, 64)  # the whole batch is fine


def test_an_all_zero_attention_mask_row_is_refused(processor, embedder):
    batch = processor.process_queries([{"text": "x"}, {"text": "y"}, {"text": "z"}])
    batch["attention_mask"][1] = 0
    with pytest.raises(ValueError, match=r"attention_mask row 1 is all zeros"):
        embedder(**batch)


def test_generate_and_embed_checks_its_inputs(tiny_qwen2_vl, processor):
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl, mode="unified", head_type="self_init",
                                          num_head_layers=1).eval()
    inputs = processor.process_reasoner_inputs([{"image": solid("red"), "text": "x"}], task_type="vqa")
    with pytest.raises(ValueError, match=r"input_ids hold 4 image tokens"):
        model.generate_and_embed(inputs["input_ids"], inputs["attention_mask"], max_new_tokens=2)


# ---------------------------------------------------------------- E: last_token_pool pools the end-of-turn token
def _last_end_of_turn(input_ids: torch.Tensor, end_id: int) -> list[int]:
    """The position of each row's last end-of-turn token, found by searching the ids."""
    return [max(i for i, token in enumerate(row.tolist()) if token == end_id) for row in input_ids]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_the_pooled_position_is_each_rows_end_of_turn_token(processor, embedder, padding_side):
    rows = mixed_rows() + [{"text": "a much longer text row with many more words than the others in it"}]
    batch = processor.process_queries(rows, padding_side=padding_side)
    end_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    positions = _last_end_of_turn(batch["input_ids"], end_id)
    mask = batch["attention_mask"]
    assert (mask == 0).any(dim=1).sum() >= 2  # rows of different lengths: real padding
    assert len(set(positions)) > 1 if padding_side == "right" else set(positions) == {mask.shape[1] - 1}
    # pooling the ids themselves gives each row's end-of-turn token
    pooled_ids = last_token_pool(batch["input_ids"][..., None], mask)[:, 0]
    assert pooled_ids.tolist() == [end_id] * len(rows)
    # and the model's embedding is the final hidden state at exactly that position
    with torch.no_grad():
        out = embedder(**batch, output_hidden_states=True)
    final = out.hidden_states[-1]
    expected = torch.stack([final[row, position] for row, position in enumerate(positions)])
    torch.testing.assert_close(out.embeddings, expected, atol=0, rtol=0)


def test_last_token_pool_on_known_positions():
    hidden = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert last_token_pool(hidden, right)[:, 0].tolist() == [2.0, 9.0]
    assert last_token_pool(hidden, left)[:, 0].tolist() == [4.0, 9.0]
    assert last_token_pool(hidden, None)[:, 0].tolist() == [4.0, 9.0]


# ---------------------------------------------------------------- E: each QFormer block reads its own layer
@pytest.mark.parametrize("qformer_layers", [None, [0, 2], [2, 1, 0]])
def test_each_qformer_block_cross_attends_to_its_configured_layer(tiny_qwen2_vl, processor, qformer_layers):
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl, mode="unified", head_type="qformer", head_num_heads=4,
                                          head_num_queries=4, qformer_layers=qformer_layers).eval()
    expected = qformer_layers or [1, 2]  # default: the last min(4, depth) = 2 layers of the 2-layer backbone
    assert len(model.head.blocks) == len(expected)
    seen = []
    hooks = [block.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
             for block in model.head.blocks]
    batch = processor.process_queries(mixed_rows())
    try:
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == len(expected)
    for block, (memory, layer) in enumerate(zip(seen, expected, strict=True)):
        torch.testing.assert_close(memory, out.hidden_states[layer], atol=0, rtol=0, msg=f"block {block}")
        others = [i for i in range(len(out.hidden_states)) if i != layer]
        assert all(not torch.equal(memory, out.hidden_states[i]) for i in others), f"block {block}"
