"""Fast local ECR generation: rows sorted by prompt length into left-padded batches, outputs in request order."""

import torch

from tests.helpers import solid
from train.generate_ecr import ECRRequest, LocalBackend


def varied_requests() -> list[ECRRequest]:
    """Prompts of very different lengths (a video, images of two sizes, short and long text), in no length order."""
    rows = [
        {"text": "red"},
        {"video": [solid("red"), solid("blue"), solid("green"), solid("white")], "text": "what happens"},
        {"image": solid("blue", 64), "text": "what colour " * 12},
        {"text": "a blue square next to a red circle " * 6},
        {"image": solid("green"), "text": "colour?"},
        {"text": "two"},
    ]
    return [ECRRequest("demo", str(i), "query", row, "vqa") for i, row in enumerate(rows)]


def test_length_sorted_batches_equal_one_at_a_time_in_request_order(tiny_qwen2_vl):
    requests = varied_requests()
    backend = LocalBackend(tiny_qwen2_vl, max_new_tokens=10, batch_size=4)
    backend.check()
    calls = []
    generate = backend.model.generate
    backend.model.generate = lambda **inputs: calls.append(inputs["input_ids"]) or generate(**inputs)
    batched = backend.generate(requests)
    assert [ids.shape[0] for ids in calls] == [4, 2]
    lengths = [int(mask.sum()) for ids in calls for mask in (ids != backend.pad_id)]
    assert lengths == sorted(lengths, reverse=True)  # batches of similar length, longest first
    assert all(bool((ids[:, -1] != backend.pad_id).all()) for ids in calls)  # left padding
    single = [backend.generate([request])[0] for request in requests]
    assert [out.text for out in batched] == [out.text for out in single]
    assert [out.num_tokens for out in batched] == [out.num_tokens for out in single]
    assert [out.prompt_hash for out in batched] == [out.prompt_hash for out in single]
    assert len({out.prompt_hash for out in batched}) == len(requests)


def test_stops_at_end_of_turn_and_caps_length(tiny_qwen2_vl):
    requests = varied_requests()[:3]
    backend = LocalBackend(tiny_qwen2_vl, max_new_tokens=7)
    backend.check()
    eos = backend.processor.tokenizer.eos_token_id
    assert eos in backend.stop_ids
    steps = []
    generate = backend.model.generate
    backend.model.generate = lambda **inputs: steps.append(generate(**inputs)) or steps[-1]
    capped = backend.generate(requests)
    assert max(out.num_tokens for out in capped) == 7 and steps[-1].shape[1] == calls_length(requests, backend) + 7
    backend.sampling["sequence_bias"] = {(eos,): 100.0}  # the end-of-turn token becomes every row's first token
    stopped = backend.generate(requests)
    assert [(out.text, out.num_tokens) for out in stopped] == [("", 0)] * 3
    assert steps[-1].shape[1] == calls_length(requests, backend) + 1  # generation stopped at once, not at the cap
    assert torch.all(steps[-1][:, -1] == eos)


def calls_length(requests, backend) -> int:
    """The left-padded prompt length of `requests` as one batch."""
    texts = [backend.prepare(request)[2] for request in requests]
    media = [backend.prepare(request)[1] for request in requests]
    images = [image for m in media for image in m["images"]] or None
    videos = [video for m in media for video in m["videos"]] or None
    return backend.processor(text=texts, images=images, videos=videos, padding=True,
                             return_tensors="pt")["input_ids"].shape[1]
