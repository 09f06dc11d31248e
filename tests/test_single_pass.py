"""Single-pass TTE_u (`generate_and_embed`) equals generate-then-embed, without a second forward pass.

A random tiny backbone rarely writes `<|im_end|>` by itself. To get rows that finish early, a `sequence_bias`
(a standard generation setting) makes the model write the real `<|im_end|>` right after a token that only the
chosen rows produce greedily; the other rows run to `max_new_tokens` and get an eos appended. Each test asserts
that both kinds of row are present.
"""

import pytest
import torch

from modeling_tte import TTEForEmbedding, two_pass_inputs
from processing_tte import TTEProcessor
from tests.helpers import mixed_rows

MAX_NEW = 6
TOLERANCE = 1e-4
# image row, 3-frame video row, text-only row, and a shorter text-only row: four prompt lengths, left-padded
ROWS = [*mixed_rows(), {"text": "blue", "instruction": "Represent."}]
CASES = [
    ("qwen2_vl", "last_token", {}),
    ("qwen2_vl", "last_token", {"head_layer": 1}),
    ("qwen2_vl", "attention_pooler", {"head_layer": 0}),  # the embeddings, pooled over all tokens
    ("qwen2_vl", "latent_attention", {}),
    ("qwen2_vl", "qformer", {}),
    ("qwen2_vl", "self_init", {}),
    ("qwen2_vl", "self_init", {"num_head_layers": 1}),
    ("qwen3_vl", "self_init", {}),  # copies both layers: deepstack is added after the first copied one
    ("qwen3_vl", "self_init", {"num_head_layers": 1}),
    ("qwen3_vl", "qformer", {}),
    ("qwen2_5_vl", "attention_pooler", {}),
]


@pytest.fixture(scope="module")
def setup(tiny_backbone):
    """Per family: (checkpoint path, left-padded generation batch, eos id, greedy tokens of each row)."""
    cache = {}

    def make(family):
        if family not in cache:
            for seed in range(8):  # the first seed whose random backbone gives rows 0 and 1 a token of their own
                path = tiny_backbone(family, seed=seed) if seed else tiny_backbone(family)
                processor = TTEProcessor.from_backbone(path)
                batch = processor.process_reasoner_inputs(ROWS, task_type="retrieval")
                vlm = TTEForEmbedding.from_backbone(path, mode="unified", head_num_heads=4).eval().vlm
                with torch.no_grad():
                    greedy = vlm.generate(**batch, max_new_tokens=MAX_NEW, do_sample=False)
                greedy = greedy[:, batch["input_ids"].shape[1]:].tolist()
                if all(stop_token(greedy, row, [0, 1]) is not None for row in (0, 1)):
                    break
            else:
                pytest.fail(f"no {family} backbone seed in 0-7 writes a greedy token only rows 0 and 1 produce")
            cache[family] = path, batch, processor.tokenizer.eos_token_id, greedy
        return cache[family]

    return make


def stop_token(greedy: list[list[int]], row: int, stopping_rows: list[int]) -> int | None:
    """The earliest greedy token of `row` (before the cap) that no row outside `stopping_rows` produces."""
    others = {token for index, tokens in enumerate(greedy) if index not in stopping_rows for token in tokens}
    return next((t for t in greedy[row][:MAX_NEW - 1] if t not in others), None)


def stop_bias(greedy: list[list[int]], stopping_rows: list[int], eos: int) -> dict:
    """A `sequence_bias` making each row in `stopping_rows` write eos after its `stop_token`, so that the other rows
    keep their greedy tokens up to the cap."""
    return {(stop_token(greedy, row, stopping_rows), eos): 100.0 for row in stopping_rows}


def build(path, head_type, **overrides):
    model = TTEForEmbedding.from_backbone(path, mode="unified", head_type=head_type, head_num_heads=4, **overrides)
    return model.eval()


def stopped_rows(output, prompt_length: int, eos: int) -> torch.Tensor:
    """Which rows wrote eos themselves (rather than having it appended at the cap)."""
    return (output.sequences[:, prompt_length:] == eos).any(dim=1)


def spy_on_states(model) -> list:
    """Record the `BackboneStates` each call of `model.embed_states` receives."""
    seen, embed_states = [], model.embed_states
    model.embed_states = lambda states: seen.append(states) or embed_states(states)
    return seen


def assert_states_match(single, full, valid: torch.Tensor) -> None:
    """The captured states equal those of one forward over prompt + ECR, at every non-padding position."""
    compared = 0
    for index, hidden in enumerate(single.hidden_states):
        if hidden is not None:
            torch.testing.assert_close(hidden[valid], full.hidden_states[index][valid], atol=TOLERANCE, rtol=0)
            compared += 1
    if single.layer_capture is not None:
        one, two = single.layer_capture, full.layer_capture
        torch.testing.assert_close(one.inputs[valid], two.inputs[valid], atol=TOLERANCE, rtol=0)
        for added, reference in zip(one.injections(), two.injections(), strict=True):
            assert (added is None) == (reference is None)
            if added is not None:
                torch.testing.assert_close(added[valid], reference[valid], atol=TOLERANCE, rtol=0)
        compared += 1
    assert compared > 0


@pytest.mark.parametrize(("family", "head_type", "overrides"), CASES)
def test_single_pass_equals_two_pass(setup, family, head_type, overrides):
    path, batch, eos, greedy = setup(family)
    model = build(path, head_type, **overrides)
    seen = spy_on_states(model)
    with torch.no_grad():
        out = model.generate_and_embed(**batch, max_new_tokens=MAX_NEW, sequence_bias=stop_bias(greedy, [0, 1], eos))
        two_pass = two_pass_inputs(batch, out)
        reference = model(**two_pass).embeddings
        full = model.backbone_states(all_hidden_states=True, **two_pass)
    assert_states_match(seen[0], full, out.attention_mask.bool())
    stopped = stopped_rows(out, batch["input_ids"].shape[1], eos)
    assert stopped.tolist() == [True, True, False, False]  # image and video rows stop early, text rows hit the cap
    ecr_lengths = out.attention_mask[:, batch["input_ids"].shape[1]:].sum(1)
    assert (ecr_lengths[stopped] < MAX_NEW).all() and (ecr_lengths[~stopped] == MAX_NEW + 1).all()
    assert (out.ecr_ids.gather(1, ecr_lengths[:, None] - 1) == eos).all()  # every ECR ends with its eos
    assert out.embeddings.shape == (4, 64)
    pairs = torch.triu_indices(4, 4, offset=1)
    assert torch.cdist(out.embeddings, out.embeddings)[pairs[0], pairs[1]].min() > 1e-3  # four different embeddings
    diff = (out.embeddings - reference).abs().max().item()
    assert diff <= TOLERANCE, f"{family}/{head_type}: single-pass differs from two-pass by {diff:.2e}"


def test_sampled_tokens_embed_like_their_two_pass(setup):
    path, batch, eos, greedy = setup("qwen2_vl")
    model = build(path, "qformer")
    seen = spy_on_states(model)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate_and_embed(**batch, max_new_tokens=MAX_NEW, do_sample=True, top_k=0)
        two_pass = two_pass_inputs(batch, out)
        reference = model(**two_pass).embeddings
        full = model.backbone_states(all_hidden_states=True, **two_pass)
    assert out.sequences[:, batch["input_ids"].shape[1]:].tolist() != greedy  # it really sampled
    assert_states_match(seen[0], full, out.attention_mask.bool())
    torch.testing.assert_close(out.embeddings, reference, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("stopping_rows", [[0, 1], [0, 1, 2, 3]], ids=["some-capped", "all-stop-early"])
def test_no_second_forward_over_prompt_and_ecr(setup, stopping_rows):
    path, batch, eos, greedy = setup("qwen2_vl")
    model = build(path, "self_init", num_head_layers=1)
    decoder, lengths, vision_calls = model.vlm.get_decoder(), [], []
    handles = [decoder.layers[0].register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1])),
               model.vlm.model.visual.register_forward_hook(lambda m, args, out: vision_calls.append(1))]
    try:
        with torch.no_grad():
            out = model.generate_and_embed(**batch, max_new_tokens=MAX_NEW,
                                           sequence_bias=stop_bias(greedy, stopping_rows, eos))
    finally:
        for handle in handles:
            handle.remove()
    prompt_length = batch["input_ids"].shape[1]
    generated = out.sequences.shape[1] - prompt_length
    all_stopped = stopped_rows(out, prompt_length, eos).all().item()
    assert all_stopped == (len(stopping_rows) == 4)
    # prefill, one call per decode step, then one cached step feeding the last token (+ the appended eos)
    assert lengths == [prompt_length] + [1] * (generated - 1) + [1 if all_stopped else 2]
    assert out.attention_mask.shape[1] == prompt_length + generated + (0 if all_stopped else 1)
    assert len(vision_calls) == 2  # the vision tower ran once for the images and once for the video, in prefill
    with torch.no_grad():
        again = model.vlm.generate(**batch, max_new_tokens=MAX_NEW, do_sample=False,
                                   sequence_bias=stop_bias(greedy, stopping_rows, eos))
    assert torch.equal(out.sequences, again)  # the hooks do not change what is generated
    with torch.no_grad():
        reference = model(**two_pass_inputs(batch, out)).embeddings
    torch.testing.assert_close(out.embeddings, reference, atol=TOLERANCE, rtol=0)


def test_embedder_mode_cannot_generate_and_embed(tiny_qwen2_vl):
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl).eval()
    batch = TTEProcessor.from_backbone(tiny_qwen2_vl).process_reasoner_inputs(ROWS[:1], task_type="retrieval")
    with pytest.raises(ValueError, match="generate_and_embed needs a unified model"):
        model.generate_and_embed(**batch, max_new_tokens=2)


def test_beam_search_is_rejected(setup):
    path, batch, _, _ = setup("qwen2_vl")
    model = build(path, "last_token")
    with pytest.raises(ValueError, match="num_beams>1"):
        model.generate_and_embed(**batch, max_new_tokens=2, num_beams=2)
    model.vlm.generation_config.num_beams = 3  # a checkpoint's default, overridden per call
    with pytest.raises(ValueError, match="num_beams>1"):
        model.generate_and_embed(**batch, max_new_tokens=2)
    assert model.generate_and_embed(**batch, max_new_tokens=2, num_beams=1).embeddings.shape == (4, 64)
