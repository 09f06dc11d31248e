"""Reasoner backends for ECR generation: `LocalBackend` (a `transformers` VLM: length-sorted, left-padded,
batched `generate`, greedy by default) and `OpenAIBackend` (any OpenAI-compatible chat-completions server:
`vllm serve`, SGLang, TGI, `transformers serve`; bounded concurrency, retries with backoff). Both turn
`ECRRequest`s into `GenerationOutput`s; `train.generate_ecr.run_generation` drives them and writes the store.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from processing_tte import TASK_TYPES, PromptRegistry, TTEProcessor, as_registry, parse_ecr
from prompts_tte import REGISTRY_FILE
from train.batching import length_sorted_batches, map_chunks, pad_features
from train.ecr_store import content_hash, ecr_key, prompt_hash, short_hash

logger = logging.getLogger(__name__)


@dataclass
class ECRRequest:
    r"""
    One row to reason about.

    Args:
        dataset (`str`), row_id (`str`), side (`str`): the store key; `side` is `"query"` or `"target"`.
        row (`dict`): a `TTEProcessor` row (`image`, `video`, `text`, `instruction`).
        task_type (`str`): one of `processing_tte.TASK_TYPES`; picks the reasoner prompt.
        hint (`str`, *optional*): the ground-truth target, for teacher runs on training data only.
    """

    dataset: str
    row_id: str
    side: str
    row: dict
    task_type: str
    hint: str | None = None

    def __post_init__(self):
        self.row_id = str(self.row_id)
        ecr_key(self.dataset, self.row_id, self.side)  # validates the side
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"{self.where}: task_type must be one of {list(TASK_TYPES)}, got {self.task_type!r}")

    @property
    def key(self) -> tuple[str, str, str]:
        return ecr_key(self.dataset, self.row_id, self.side)

    @property
    def where(self) -> str:
        return f"{self.dataset}/{self.row_id}/{self.side}"


def request_hash(request: ECRRequest, reasoner: str, prompts: PromptRegistry | None = None) -> str:
    """A short hash of everything an ECR depends on, computed without loading media or a model: the row's content
    (`train.ecr_store.content_hash`), side, task type, hint, the prompt `prompts` (default: the shipped registry)
    gives the request's dataset and side, and the reasoner's identity (`ReasonerBackend.identity`). A stored record
    with another request hash is stale."""
    prompts = prompts or PromptRegistry.load()
    return short_hash({"content": content_hash(request.row), "side": request.side, "task_type": request.task_type,
                       "hint": request.hint, "reasoner": reasoner,
                       "prompt": prompts.fingerprint(request.dataset, request.task_type, request.side, request.hint)})


@dataclass
class GenerationOutput:
    """What a backend made of one request: the ECR text and its length in tokens, or an error."""

    text: str | None = None
    num_tokens: int = 0
    prompt_hash: str | None = None
    error: str | None = None


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def reasoner_prompt(processor: TTEProcessor, request: ECRRequest,
                    prompts: PromptRegistry | None = None) -> tuple[list[dict], dict, str]:
    """The chat messages, media and prompt text of `request`, asked as `prompts` (default: the processor's) asks
    for its dataset and side (raises errors that name the row)."""
    messages, media = processor.reasoner_messages(request.row, request.task_type, request.side, request.hint,
                                                  where=request.where, dataset=request.dataset, prompts=prompts)
    prompt = processor.backbone.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return messages, media, prompt


def prepare_generation(processor: TTEProcessor, prompts: PromptRegistry | None, requests: list[ECRRequest],
                       start: int = 0) -> list:
    """Per request, `(GenerationOutput with its prompt hash, processed generation inputs)`, or a `GenerationOutput`
    with the error of a row that cannot be prepared (the work `LocalBackend` runs in `DataLoader` workers; `start`
    is unused, for `train.batching.map_chunks`)."""
    prepared = []
    for request in requests:
        try:
            _, media, prompt = reasoner_prompt(processor, request, prompts)
        except (ValueError, FileNotFoundError, OSError) as error:
            prepared.append(GenerationOutput(error=_error_text(error)))
            continue
        try:
            features = processor(text=[prompt], images=media["images"] or None, videos=media["videos"] or None,
                                 return_tensors="pt")
        except Exception as error:  # noqa: BLE001 - reported for this row, as a failed batch retried row by row was
            prepared.append(GenerationOutput(error=_error_text(error)))
            continue
        prepared.append((GenerationOutput(prompt_hash=prompt_hash(prompt)), features))
    return prepared


def backend_prompts(prompts, processor: TTEProcessor | None, checkpoint: str | None = None) -> PromptRegistry:
    """The registry a backend asks with: `prompts` (a `PromptRegistry`, or a YAML file read over the shipped one),
    else the processor's, else the one saved in the local `checkpoint` folder (a distilled student's), else the
    shipped one."""
    if prompts is not None:
        return as_registry(prompts)
    if processor is not None:
        return processor.prompts
    saved = Path(checkpoint) / REGISTRY_FILE if checkpoint else None
    return PromptRegistry.read(saved) if saved is not None and saved.is_file() else PromptRegistry.load()


class ReasonerBackend:
    """Common part of the backends: turns a request into the reasoner's chat prompt with a `TTEProcessor`."""

    name: str
    processor: TTEProcessor
    prompts: PromptRegistry  # what the reasoner is asked, per dataset and side

    @property
    def identity(self) -> str:
        """What makes this reasoner's ECR differ from another's: its name, model and sampling settings."""
        raise NotImplementedError

    def check(self) -> None:
        """Fail early (load the model, reach the server); called once before the first `generate`."""

    def prepare(self, request: ECRRequest) -> tuple[list[dict], dict, str]:
        """The chat messages, media and prompt text of `request` (raises errors that name the row)."""
        return reasoner_prompt(self.processor, request, self.prompts)

    def generate(self, requests: list[ECRRequest]) -> list[GenerationOutput]:
        raise NotImplementedError


class LocalBackend(ReasonerBackend):
    r"""
    A local `transformers` VLM as the reasoner: batched `generate` with left padding, stopping at the end-of-turn
    token, at most `max_new_tokens` per ECR. Each prompt is processed once; the rows of one `generate` call are
    sorted by prompt length and run in batches of `batch_size` rows of similar length (little padding), and the
    outputs come back in request order.

    Args:
        model (`str` or `PreTrainedModel`): a checkpoint (hub id or folder, e.g. a distilled student) or a model.
        processor (`TTEProcessor`, *optional*): defaults to `TTEProcessor.from_backbone(model)`.
        prompts (`PromptRegistry` or `str`, *optional*): what the reasoner is asked (a registry YAML file is read
            over the shipped one); defaults to the processor's registry, or the shipped one.
        name (`str`, *optional*): the reasoner's name in the records (defaults to the checkpoint path).
        max_new_tokens (`int`, *optional*, defaults to 512): longest ECR: the thinking budget.
        force_answer_tokens (`int`, *optional*, defaults to 0): when a trace reaches `max_new_tokens` without an
            `Answer:` line, close it (`</think> Answer:`) and generate at most this many more tokens, so a budgeted
            ECR still ends with an answer (0: traces are cut at the budget as they are).
        do_sample (`bool`, *optional*, defaults to `False`): greedy unless `True`; then `temperature`, `top_p`,
            `top_k` and `seed` apply.
        device (`str`, *optional*): where to run (defaults to CUDA when available); dtype (`str`, defaults `"auto"`).
        batch_size (`int`, *optional*): rows per model `generate`; by default all rows of a `generate` call.
        num_workers (`int`, *optional*, defaults to 0): `DataLoader` worker processes that build and process the
            prompts of a `generate` call (media loading, image processor, tokenizer) in parallel; 0 does it in this
            process. The ECR are the same either way.
        multiprocessing_context (`str`, *optional*): how workers start (`"fork"`, `"spawn"`, `"forkserver"`).
    """

    def __init__(self, model, processor: TTEProcessor | None = None, name: str | None = None,
                 max_new_tokens: int = 512, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int | None = None, seed: int = 0, device: str | None = None, dtype: str = "auto",
                 batch_size: int | None = None, num_workers: int = 0, multiprocessing_context: str | None = None,
                 prompts: PromptRegistry | str | None = None, force_answer_tokens: int = 0):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        self.num_workers, self.multiprocessing_context = num_workers, multiprocessing_context
        if isinstance(model, str | Path):
            self.model_path, self.model = str(model), None
        else:
            self.model_path, self.model = getattr(model, "name_or_path", type(model).__name__), model
        self.name = name or self.model_path
        self.processor = processor
        self.prompts = backend_prompts(prompts, processor, self.model_path)
        self.sampling = dict(max_new_tokens=max_new_tokens, do_sample=do_sample)
        if do_sample:
            self.sampling.update(temperature=temperature, top_p=top_p, top_k=top_k)
        self.seed, self.device, self.dtype, self.batch_size = seed, device, dtype, batch_size
        self.force_answer_tokens = force_answer_tokens
        self.generated_rows = 0  # rows the model actually generated for (a finished job re-run adds none)

    @property
    def identity(self) -> str:
        seed = self.seed if self.sampling["do_sample"] else None
        settings = {"name": self.name, "model": self.model_path, "sampling": self.sampling, "seed": seed}
        if self.force_answer_tokens:
            settings["force_answer_tokens"] = self.force_answer_tokens
        return short_hash(settings)

    def check(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, set_seed

        if self.processor is None:
            self.processor = TTEProcessor.from_backbone(self.model_path)
        if self.model is None:
            self.model = AutoModelForImageTextToText.from_pretrained(self.model_path, dtype=self.dtype)
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.model.to(device)
        self.model.eval()
        tokenizer = self.processor.tokenizer
        self.stop_ids = end_of_turn_ids(self.model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        set_seed(self.seed)

    def generate(self, requests: list[ECRRequest]) -> list[GenerationOutput]:
        chunk = 1 if self.num_workers else max(len(requests), 1)
        work = functools.partial(prepare_generation, self.processor, self.prompts)
        prepared = [item for items in map_chunks(work, requests, chunk, self.num_workers,
                                                 multiprocessing_context=self.multiprocessing_context)
                    for item in items]
        return self._run(prepared)

    def _run(self, prepared: list) -> list[GenerationOutput]:
        """Generate for the prepared rows (see `prepare_generation`); a failed batch is retried row by row."""
        outputs = [item if isinstance(item, GenerationOutput) else item[0] for item in prepared]
        ready = [(index, item[1]) for index, item in enumerate(prepared) if not isinstance(item, GenerationOutput)]
        if not ready:
            return outputs
        try:
            texts = self._generate([features for _, features in ready])
        except Exception as error:  # noqa: BLE001 - reported per row; a lone row cannot be split further
            if len(ready) == 1:
                outputs[ready[0][0]] = GenerationOutput(error=_error_text(error))
                return outputs
            logger.warning(f"A batch of {len(ready)} failed ({_error_text(error)}); retrying its rows one by one")
            return [self._run([item])[0] for item in prepared]
        for (index, _), (text, num_tokens) in zip(ready, texts, strict=True):
            outputs[index].text, outputs[index].num_tokens = text, num_tokens
        return outputs

    def _generate(self, features: list) -> list[tuple[str, int]]:
        """Generate for each processed prompt (in its order), in batches of rows of similar length."""
        import torch

        lengths = [feature["input_ids"].shape[1] for feature in features]
        results = [None] * len(features)
        pin = self.model.device.type == "cuda"
        for indices in length_sorted_batches(lengths, self.batch_size or len(features)):
            inputs = pad_features([features[i] for i in indices], self.pad_id, padding_side="left", pin_memory=pin)
            inputs = inputs.to(self.model.device, non_blocking=pin)
            with torch.inference_mode():
                sequences = self.model.generate(**inputs, **self.sampling, eos_token_id=self.stop_ids,
                                                pad_token_id=self.pad_id)
            for index, new in zip(indices, sequences[:, inputs["input_ids"].shape[1]:].tolist(), strict=True):
                end = self._stop(new)
                results[index] = (self._text(new[:end]), end)
                if self.force_answer_tokens and end == len(new) and parse_ecr(results[index][0]).answer is None:
                    results[index] = self._force_answer(features[index], new, results[index][0])
        self.generated_rows += len(features)
        return results

    def _stop(self, tokens: list[int]) -> int:
        """The length of a generation up to its first end-of-turn or pad token."""
        return trace_length(tokens, {*self.stop_ids, self.pad_id})

    def _force_answer(self, feature, generated: list[int], text: str) -> tuple[str, int]:
        """Close a trace (`generated`, decoded as `text`) cut at the budget with `</think> Answer:` and let the model
        write the answer (at least one token, at most `force_answer_tokens`)."""
        import torch

        suffix = (" </think>" if "<think>" in text and "</think>" not in text else "") + " Answer:"
        added = generated + self.processor.tokenizer(suffix, add_special_tokens=False)["input_ids"]
        length = feature["input_ids"].shape[1]
        inputs = {key: torch.cat([value, value.new_tensor([added]) if key == "input_ids" else
                                  value.new_ones((1, len(added))) if key == "attention_mask" else
                                  value.new_zeros((1, len(added)))], dim=1)
                  if torch.is_tensor(value) and value.shape == (1, length) else value
                  for key, value in feature.items()}
        inputs = {key: value.to(self.model.device) if torch.is_tensor(value) else value
                  for key, value in inputs.items()}
        sampling = {**self.sampling, "max_new_tokens": self.force_answer_tokens, "min_new_tokens": 1}
        with torch.inference_mode():
            sequence = self.model.generate(**inputs, **sampling, eos_token_id=self.stop_ids, pad_token_id=self.pad_id)
        answer = sequence[0, inputs["input_ids"].shape[1]:].tolist()
        end = self._stop(answer)
        return self._text(added + answer[:end]), len(added) + end

    def _text(self, tokens: list[int]) -> str:
        """The decoded trace (`trace_text`); a warning says when media tokens were removed from it."""
        text, had_media = trace_text(self.processor, tokens)
        if had_media and not getattr(self, "_warned_media", False):
            logger.warning(f"{self.name}: generated media tokens such as <|image_pad|>; they are removed from the "
                           f"trace")
            self._warned_media = True
        return text


def end_of_turn_ids(model, tokenizer) -> list[int]:
    """The tokens that end a generation: the tokenizer's EOS and every eos id of the model's generation config."""
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted({tokenizer.eos_token_id, *eos} - {None})


def trace_length(tokens: list[int], stops) -> int:
    """The length of a generation up to its first token in `stops` (end-of-turn and pad ids)."""
    return next((i for i, token in enumerate(tokens) if token in stops), len(tokens))


def trace_text(processor, tokens: list[int]) -> tuple[str, bool]:
    """Generated tokens as the ECR text stored for them: decoded with special tokens kept (`<think>` is one in some
    tokenizers) but without media tokens (a weak model can emit `<|image_pad|>`, which no embedder input may hold as
    text), stripped; and whether any media token was removed."""
    text, had_media = processor.tokenizer.decode(tokens, skip_special_tokens=False), False
    for token in processor.media_tokens():
        if token in text:
            text, had_media = text.replace(token, ""), True
    return text.strip(), had_media


# --------------------------------------------------------------------------------------------- OpenAI-compatible
def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(messages: list[dict], media: dict) -> list[dict]:
    """`TTEProcessor` chat messages with their media as OpenAI content parts (images as base64 PNG data URLs;
    a video as its frames, one image part each, since chat completions have no standard video part)."""
    images, videos = iter(media["images"]), iter(media["videos"])
    converted = []
    for message in messages:
        parts = []
        for part in message["content"]:
            if part["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": _data_url(next(images))}})
            elif part["type"] == "video":
                parts += [{"type": "image_url", "image_url": {"url": _data_url(frame)}} for frame in next(videos)]
            else:
                parts.append({"type": "text", "text": part["text"]})
        converted.append({"role": message["role"], "content": parts})
    return converted


_TRANSIENT_STATUS = {408, 409, 429}
_FAST_RETRIES, _FAST_DELAY = 2, 0.2  # connection refused: the server is not there, so say so within a second


def _transient(status: int) -> bool:
    return status in _TRANSIENT_STATUS or status >= 500


def _refused(error: BaseException) -> bool:
    """Whether an `openai.APIConnectionError` is a refused (or unresolvable) connection rather than a timeout."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return False
    cause = error.__cause__
    for _ in range(8):  # the client's error wraps the transport's, which wraps the socket's
        if cause is None:
            return False
        if isinstance(cause, ConnectionRefusedError) or type(cause).__name__ == "ConnectError":
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _failure_text(error: BaseException) -> str:
    """A row's failure reason, saying how many retries were sent (none for non-transient answers)."""
    import openai

    if isinstance(error, openai.APIStatusError) and not _transient(error.status_code):
        return (f"server answered {error.status_code}, not retried (only 408, 409, 429 and 5xx answers and "
                f"connection errors are): {_error_text(error)}")
    retries = getattr(error, "retries", 0)
    return f"server error after {retries} {'retry' if retries == 1 else 'retries'}: {_error_text(error)}"


def reply_text(response) -> str:
    """The ECR text of a chat-completions reply; raises `ValueError` for a reply with no choice or no content."""
    choices = getattr(response, "choices", None)
    if not choices:
        raise ValueError(f"the server replied without choices ({choices!r})")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str) or not content.strip():
        reason = getattr(choices[0], "finish_reason", None)
        raise ValueError(f"the server replied with empty content ({content!r}, finish_reason {reason!r})")
    return content.strip()


class OpenAIBackend(ReasonerBackend):
    r"""
    An OpenAI-compatible chat-completions server as the reasoner (`vllm serve`, SGLang, TGI, `transformers serve`).

    Requests run concurrently (at most `max_concurrency` in flight); timeouts, 408/409/429 and 5xx answers are
    retried with exponential backoff and jitter, up to `max_retries` times, and then reported as that row's
    failure; other 4xx answers are not retried. A refused connection is retried at most twice, quickly. A reply
    without choices or with empty content is that row's failure (never stored). A bad URL raises `ConnectionError`,
    a rejected API key `PermissionError`, a model the server does not serve `ValueError`, all before any row is sent.

    Args:
        base_url (`str`): the API base, e.g. `"http://localhost:8000/v1"`.
        model (`str`): the served model's name (`vllm serve Qwen/Qwen2.5-VL-72B-Instruct` serves that name).
        processor (`TTEProcessor` or `str`): builds the prompts (and their hash); a hub id or folder is loaded
            with `TTEProcessor.from_backbone`. Use the served model's own processor.
        prompts (`PromptRegistry` or `str`, *optional*): what the reasoner is asked (a registry YAML file is read
            over the shipped one); defaults to the processor's registry.
        api_key (`str`, *optional*, defaults to `"EMPTY"`): sent as the bearer token.
        name (`str`, *optional*): the reasoner's name in the records (defaults to `model`).
        max_new_tokens (`int`, *optional*, defaults to 512), temperature (`float`, defaults to 0: greedy),
        top_p (`float`, *optional*), seed (`int`, *optional*): sampling settings sent with each request.
        max_concurrency (`int`, defaults to 8), max_retries (`int`, defaults to 5), backoff (`float`, seconds,
        defaults to 1.0), timeout (`float`, seconds per request, defaults to 600).
    """

    def __init__(self, base_url: str, model: str, processor: TTEProcessor | str, api_key: str = "EMPTY",
                 name: str | None = None, max_new_tokens: int = 512, temperature: float = 0.0,
                 top_p: float | None = None, seed: int | None = None, max_concurrency: int = 8,
                 max_retries: int = 5, backoff: float = 1.0, timeout: float = 600.0,
                 prompts: PromptRegistry | str | None = None):
        import openai

        if max_concurrency < 1 or max_retries < 0:
            raise ValueError(f"max_concurrency must be >= 1 and max_retries >= 0, got {max_concurrency}, {max_retries}")
        self.base_url, self.model_name, self.name = base_url, model, name or model
        self.processor = TTEProcessor.from_backbone(processor) if isinstance(processor, str) else processor
        self.prompts = backend_prompts(prompts, self.processor)
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self.sampling = {"max_tokens": max_new_tokens, "temperature": temperature}
        self.sampling.update({k: v for k, v in {"top_p": top_p, "seed": seed}.items() if v is not None})
        self.max_concurrency, self.max_retries, self.backoff = max_concurrency, max_retries, backoff
        self.requests_sent = 0

    @property
    def identity(self) -> str:
        return short_hash({"name": self.name, "model": self.model_name, "sampling": self.sampling})

    def _retry_plan(self, error: BaseException, attempt: int) -> tuple[int, float]:
        """`(retries allowed, delay before the next one)` for a failed request."""
        import openai

        if isinstance(error, openai.APIStatusError) and not _transient(error.status_code):
            return 0, 0.0
        if isinstance(error, openai.APIConnectionError) and _refused(error):
            return min(self.max_retries, _FAST_RETRIES), min(self.backoff, _FAST_DELAY) * 2**attempt
        return self.max_retries, self.backoff * 2**attempt * (1 + random.random() / 2)

    def _with_retries(self, call, what: str):
        """Run `call()`, retrying transient failures (see `_retry_plan`); re-raises the last error, with the number
        of retries sent as its `retries` attribute."""
        import openai

        retries = 0
        while True:
            try:
                return call()
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                limit, delay = self._retry_plan(error, retries)
                if retries >= limit:
                    error.retries = retries
                    raise
                message = _error_text(error)
            retries += 1
            logger.warning(f"{what}: {message}; retry {retries}/{limit} in {delay:.1f}s")
            time.sleep(delay)

    def check(self) -> None:
        import openai

        try:
            served = [model.id for model in self._with_retries(self.client.models.list, "listing models")]
        except openai.APIConnectionError as error:
            raise ConnectionError(f"Cannot reach an OpenAI-compatible server at {self.base_url!r} ({error}). Is it "
                                  "running (e.g. `vllm serve ...`), and is the URL its API base (usually .../v1)?") \
                from error
        except openai.APIStatusError as error:
            raise self._status_error(error) from error
        if self.model_name in served:
            return
        try:  # some servers load models on demand and list only loaded ones: ask once with a 1-token request
            self._with_retries(lambda: self.client.chat.completions.create(
                model=self.model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=1), "probing")
        except openai.APIStatusError as error:
            raise ValueError(f"The server at {self.base_url!r} does not serve model {self.model_name!r} (it lists "
                             f"{served}); it answered {error.status_code}: {error.message}") from error

    def _status_error(self, error) -> Exception:
        """The error to raise for an HTTP error answer to `GET /models`."""
        code = error.status_code
        if code in (401, 403):
            return PermissionError(f"{self.base_url!r} answered {code} to GET /models: authentication failed; check "
                                   "the API key (train.generate_ecr reads it from the environment variable named by "
                                   "--api_key_env, OPENAI_API_KEY by default)")
        if code in (404, 405):
            return ConnectionError(f"{self.base_url!r} answered {code} to GET /models: not the base URL of an "
                                   "OpenAI-compatible API (usually http://host:port/v1)")
        return ConnectionError(f"{self.base_url!r} answered {code} to GET /models ({_failure_text(error)})")

    def _one(self, request: ECRRequest) -> GenerationOutput:
        try:
            messages, media, prompt = self.prepare(request)
            body = openai_messages(messages, media)
        except (ValueError, FileNotFoundError, OSError) as error:
            return GenerationOutput(error=_error_text(error))
        try:
            response = self._with_retries(lambda: self.client.chat.completions.create(
                model=self.model_name, messages=body, **self.sampling), request.where)
        except Exception as error:  # noqa: BLE001 - any server failure becomes this row's reported failure
            return GenerationOutput(error=_failure_text(error))
        try:
            text = reply_text(response)
        except ValueError as error:
            return GenerationOutput(error=f"invalid server reply: {error}")
        usage = getattr(response, "usage", None)
        tokens = usage.completion_tokens if usage and usage.completion_tokens else len(
            self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        return GenerationOutput(text=text, num_tokens=tokens, prompt_hash=prompt_hash(prompt))

    def generate(self, requests: list[ECRRequest]) -> list[GenerationOutput]:
        self.requests_sent += len(requests)
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))
