"""Think-Then-Embed processor: reasoner prompts, ECR parsing and truncation, and embedder inputs.

Hub remote code: imports only transformers, PIL and the standard library.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from PIL import Image, UnidentifiedImageError
from transformers import AutoProcessor, BatchFeature
from transformers.image_transforms import to_pil_image
from transformers.image_utils import load_image as hf_load_image
from transformers.processing_utils import ProcessorMixin
from transformers.utils import cached_file, logging
from transformers.video_utils import load_video as hf_load_video

try:
    from .prompts_tte import REGISTRY_FILE, TASK_TYPE_PROMPTS, PromptRegistry
except ImportError:  # imported as a top-level module (installed project, tests)
    from prompts_tte import REGISTRY_FILE, TASK_TYPE_PROMPTS, PromptRegistry

logger = logging.get_logger(__name__)

ECR_MODES = ("full", "answer_only", "none")
SIDES = ("query", "target")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"}
URL_PREFIXES = ("http://", "https://")
URL_TIMEOUT = 30.0  # seconds, per image URL
VIDEO_FPS = 2.0  # frames sampled per second from a video file
VIDEO_MAX_FRAMES = 32  # at most this many frames, uniformly spread, from a video file

REASONER_PROMPTS = TASK_TYPE_PROMPTS  # per task type: (query, target) directive, for unlisted datasets
TASK_TYPES = tuple(REASONER_PROMPTS)

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_CLOSED_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANSWER = re.compile(r"Answer:\s*(.*)", re.DOTALL)
_ANSWER_START = re.compile(r"(?<!\S)Answer:")  # an `Answer:` that starts a line or follows whitespace
TEXT_FIELDS = ("text", "instruction", "ecr")
# backbone processor / tokenizer attributes naming the tokens that the processor itself inserts for media
MEDIA_TOKEN_ATTRIBUTES = ("image_token", "video_token", "audio_token", "vision_start_token", "vision_end_token")


@dataclass
class ParsedECR:
    """An embedding-centric reasoning trace split into its parts (either may be `None`)."""

    think: str | None
    answer: str | None


def parse_ecr(text: str) -> ParsedECR:
    """
    Split `<think> ... </think> Answer: ...` into its reasoning and its answer.

    An unclosed `<think>` (a trace cut off, or a reasoner that never closes it) still has an answer when its text
    has an `Answer:` that starts a line or follows whitespace: the last such `Answer:` starts the answer.
    """
    closed = _CLOSED_THINK.search(text)
    opened = text.find("<think>")
    if closed is not None:
        think, tail = closed.group(1), text[closed.end():]
    elif opened >= 0:
        body = text[opened + len("<think>"):]
        starts = [match.start() for match in _ANSWER_START.finditer(body)]
        cut = starts[-1] if starts else len(body)
        think, tail = body[:cut], body[cut:]
    else:
        think, tail = None, text
    answer_match = _ANSWER.search(tail)
    answer = answer_match.group(1).strip() if answer_match else None
    return ParsedECR(think=think.strip() if think is not None else None, answer=answer or None)


def format_ecr(think: str | None, answer: str | None) -> str:
    """The canonical ECR text: `<think>reasoning</think> Answer: answer`."""
    parts = []
    if think is not None:
        parts.append(f"<think>{think}</think>")
    if answer is not None:
        parts.append(f"Answer: {answer}")
    return " ".join(parts)


def answer_only(text: str) -> str:
    """
    The paper's 'ECR without CoT' ablation: keep only the answer line.

    An ECR without an `Answer:` line keeps its text outside `<think> ... </think>` (as its answer); when there is
    none the result is empty, so that side is embedded without ECR (as with `ecr_mode="none"`). Both log a warning
    (once).
    """
    parsed = parse_ecr(text)
    if parsed.answer is not None:
        return format_ecr(None, parsed.answer)
    rest = _THINK.sub("", text).strip()
    if rest:
        logger.warning_once("answer_only: an ECR has no 'Answer:' line; its text outside <think> is used instead")
    else:
        logger.warning_once("answer_only: an ECR has no 'Answer:' line and no text outside <think>; that side is "
                            "embedded without ECR (as with ecr_mode='none')")
    return rest


def _short(source, limit: int = 80) -> str:
    text = str(source)
    return text if len(text) <= limit else text[:limit] + "..."


def _array_image(source, where: str) -> Image.Image:
    """An RGB PIL image from a numpy array or tensor, `(H, W, C)` or `(C, H, W)`: floats in [0, 1], integers in
    0-255."""
    if torch.is_tensor(source):
        source = source.detach().cpu()
    if len(source.shape) != 3:
        raise ValueError(f"{where}: an image array must have 3 dimensions (H, W, C) or (C, H, W), got shape "
                         f"{tuple(source.shape)}")
    floating = source.is_floating_point() if torch.is_tensor(source) else source.dtype.kind == "f"
    if floating and not (0 <= float(source.min()) and float(source.max()) <= 1):
        raise ValueError(f"{where}: a floating-point image array must hold values in [0, 1], got "
                         f"[{float(source.min())}, {float(source.max())}]")
    try:
        return to_pil_image(source, do_rescale=floating).convert("RGB")
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: cannot convert an array of shape {tuple(source.shape)} to an image: "
                         f"{error}") from error


def is_array(source) -> bool:
    """Whether `source` is a numpy array or a torch tensor (without importing numpy)."""
    return torch.is_tensor(source) or type(source).__module__ == "numpy" and hasattr(source, "shape")


def load_image(source, where: str) -> Image.Image:
    """
    An RGB PIL image from a PIL image, a path, an `http(s)://` URL or a base64 `data:image/...` URI (both through
    transformers' `load_image`), or a numpy array / tensor (`(H, W, C)` or `(C, H, W)`). Errors name `where` (row and
    field) and the source.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if is_array(source):
        return _array_image(source, where)
    if isinstance(source, str) and source.startswith((*URL_PREFIXES, "data:")):
        try:
            return hf_load_image(source, timeout=URL_TIMEOUT)
        except Exception as error:  # network errors, HTTP error pages, undecodable bytes
            raise ValueError(f"{where}: cannot load image {_short(source)}: {type(error).__name__}: "
                             f"{_short(error, 300)}") from error
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"{where}: expected a PIL image, a path, a URL, a data URI or an image array, got "
                         f"{type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{where}: cannot read image {path}: {error}") from error


def sample_video_frames(metadata, **kwargs) -> list[int]:
    """Frame indices of a video file: `VIDEO_FPS` per second, at most `VIDEO_MAX_FRAMES`, uniformly spread."""
    total = max(int(metadata.total_num_frames), 1)
    wanted = round(metadata.duration * VIDEO_FPS) if metadata.duration else total
    count = max(1, min(total, wanted, VIDEO_MAX_FRAMES))
    return torch.linspace(0, total - 1, count).round().long().unique().tolist()


def load_video_file(source: str, where: str) -> list[Image.Image]:
    """Frames of a video file or `http(s)://` URL through transformers' `load_video` (PyAV backend), sampled by
    [`sample_video_frames`]."""
    try:
        video, _ = hf_load_video(source, backend="pyav", sample_indices_fn=sample_video_frames)
    except ImportError as error:
        raise ImportError(f"{where}: reading the video file {source} needs PyAV: pip install av (or "
                          f"think-then-embed[video])") from error
    except Exception as error:  # undecodable files, network errors
        raise ValueError(f"{where}: cannot read video {source}: {type(error).__name__}: {_short(error, 300)}") \
            from error
    return [Image.fromarray(frame).convert("RGB") for frame in video]


def load_video(source, where: str) -> list[Image.Image]:
    """
    Frames from a video file (`.mp4`, ... or an `http(s)://` URL, through transformers' `load_video`), a folder of
    image files (sorted by name), a list of frames (anything `load_image` takes) or an array / tensor of frames
    (`(T, H, W, C)` or `(T, C, H, W)`).
    """
    if isinstance(source, str) and source.startswith(URL_PREFIXES):
        return load_video_file(source, where)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            return load_video_file(str(path), where)
        if not path.is_dir():
            kind = "video file" if path.suffix.lower() in VIDEO_SUFFIXES else "video file or frame folder"
            raise FileNotFoundError(f"{where}: {kind} not found: {path}")
        source = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif is_array(source):
        if len(source.shape) != 4:
            raise ValueError(f"{where}: a video array must have 4 dimensions (T, H, W, C) or (T, C, H, W), got shape "
                             f"{tuple(source.shape)}")
    elif not isinstance(source, (list, tuple)):
        raise ValueError(f"{where}: expected a video file, a frame folder, a list of frames or an array of frames, "
                         f"got {type(source).__name__}")
    frames = [load_image(frame, f"{where}[{i}]") for i, frame in enumerate(source)]
    if not frames:
        raise ValueError(f"{where}: video has no frames")
    return frames


def as_row(row, where: str) -> Mapping:
    """A processor row as a dict: a string is a text row, a PIL image an image row; dicts pass through."""
    if isinstance(row, str):
        return {"text": row}
    if isinstance(row, Image.Image):
        return {"image": row}
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected a dict, a string or a PIL image, got {type(row).__name__}")
    return row


class TTEProcessor(ProcessorMixin):
    r"""
    Builds reasoner prompts and embedder inputs for Think-Then-Embed on top of a backbone VLM processor (rebuilt
    from the stored `backbone_processor_class`, e.g. `Qwen2VLProcessor`).

    Rows are strings (text), PIL images, or dicts with any of `image` (PIL image, path, `http(s)://` URL, base64
    `data:image/...` URI, numpy array or tensor), `video` (a video file such as `.mp4` or a URL to one, read with
    PyAV; a folder of frames; a list of frames; an array of frames), `text`, `instruction`, and `ecr` (the reasoning
    trace, `<think> ... </think> Answer: ...`).

    Args:
        image_processor, video_processor, tokenizer: the backbone's sub-processors.
        chat_template (`str`, *optional*): the backbone's chat template.
        backbone_processor_class (`str`): name of the backbone processor class in `transformers`.
        ecr_mode (`str`, *optional*, defaults to `"full"`): `"full"` feeds the whole ECR to the embedder,
            `"answer_only"` only its answer line (the paper's "without CoT" ablation), `"none"` no ECR (baseline).
        max_ecr_tokens (`int`, *optional*, defaults to 512): longer ECR is truncated (keeping its answer line).

    The reasoner prompts come from `self.prompts` (a `prompts_tte.PromptRegistry`, per dataset and side): the
    shipped registry, or `prompts=` (a YAML file read over it) in `from_backbone` / `from_pretrained`; it is saved
    as `reasoner_prompts.yaml` with the processor.
    """

    def __init__(self, image_processor=None, video_processor=None, tokenizer=None, chat_template=None,
                 backbone_processor_class: str = "Qwen2VLProcessor", ecr_mode: str = "full",
                 max_ecr_tokens: int = 512, **kwargs):
        if ecr_mode not in ECR_MODES:
            raise ValueError(f"TTEProcessor.ecr_mode must be one of {list(ECR_MODES)}, got {ecr_mode!r}")
        if not isinstance(max_ecr_tokens, int) or max_ecr_tokens <= 0:
            raise ValueError(f"TTEProcessor.max_ecr_tokens must be a positive integer, got {max_ecr_tokens!r}")
        self.backbone_processor_class = backbone_processor_class
        self.ecr_mode = ecr_mode
        self.max_ecr_tokens = max_ecr_tokens
        super().__init__(image_processor, video_processor, tokenizer, chat_template=chat_template)
        backbone_class = getattr(transformers, backbone_processor_class, None)
        if backbone_class is None:
            raise ValueError(
                f"TTEProcessor.backbone_processor_class {backbone_processor_class!r} is not a transformers class"
            )
        self.backbone = backbone_class(image_processor=image_processor, video_processor=video_processor,
                                       tokenizer=tokenizer, chat_template=chat_template)
        self.prompts = PromptRegistry.shipped()

    @classmethod
    def from_backbone(cls, pretrained_model_name_or_path: str, **kwargs) -> TTEProcessor:
        """Wrap a backbone VLM's processor (hub id or local folder). `kwargs`: `ecr_mode`, `max_ecr_tokens`,
        `prompts` (a registry YAML file read over the shipped one, or a `PromptRegistry`; default: the folder's
        `reasoner_prompts.yaml`, as a distilled student saves it, else the shipped one), and anything else for
        `AutoProcessor.from_pretrained`."""
        prompts = kwargs.pop("prompts", None)
        own = {k: kwargs.pop(k) for k in ("ecr_mode", "max_ecr_tokens") if k in kwargs}
        backbone = AutoProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        missing = [name for name in ("image_processor", "video_processor", "tokenizer")
                   if getattr(backbone, name, None) is None]
        if missing:
            raise ValueError(f"{pretrained_model_name_or_path!r} has no {', '.join(missing)}: not a vision-language "
                             f"processor (got {type(backbone).__name__})")
        processor = cls(backbone.image_processor, backbone.video_processor, backbone.tokenizer,
                        chat_template=backbone.chat_template, backbone_processor_class=type(backbone).__name__, **own)
        processor.read_prompts(pretrained_model_name_or_path, prompts, kwargs)
        return processor

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, prompts=None, **kwargs) -> TTEProcessor:
        """`ProcessorMixin.from_pretrained`, with the folder's `reasoner_prompts.yaml` as the prompt registry (the
        shipped one when the folder has none); `prompts` (a YAML file or `PromptRegistry`) replaces it."""
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        processor.read_prompts(pretrained_model_name_or_path, prompts, kwargs)
        return processor

    def read_prompts(self, pretrained_model_name_or_path, prompts, hub_kwargs: dict) -> None:
        """Set the prompt registry: `prompts` when given, else the `reasoner_prompts.yaml` saved in the folder or
        hub repo (`hub_kwargs`: `cache_dir`, `revision`, ...), else keep the shipped one."""
        if prompts is not None:
            self.prompts = as_registry(prompts)
            return
        hub = {k: hub_kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder")
               if k in hub_kwargs}
        path = cached_file(pretrained_model_name_or_path, REGISTRY_FILE, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **hub)
        if path is not None:
            self.prompts = PromptRegistry.read(path)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`ProcessorMixin.save_pretrained`, plus the prompt registry as `reasoner_prompts.yaml`."""
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        self.prompts.save(save_directory)
        return saved

    def __call__(self, *args, **kwargs) -> BatchFeature:
        """The backbone processor's `__call__` (text with image/video placeholders, images, videos)."""
        return self.backbone(*args, **kwargs)

    @property
    def model_input_names(self):
        return self.backbone.model_input_names

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    # ---------------------------------------------------------------- rows and messages
    def media_tokens(self) -> list[str]:
        """The tokens the backbone processor inserts for media (e.g. `<|image_pad|>`), which row text must not hold."""
        tokens = (getattr(owner, name, None) for owner in (self.backbone, self.tokenizer)
                  for name in MEDIA_TOKEN_ATTRIBUTES)
        return list(dict.fromkeys(token for token in tokens if isinstance(token, str) and token))

    def check_row_text(self, row: Mapping, where: str) -> None:
        """Raise `TypeError` / `ValueError` naming `where` and the field if a text field of `row` (`text`,
        `instruction`, `ecr`) is not a string, is not valid Unicode (lone surrogates), or holds a media token."""
        for name in TEXT_FIELDS:
            value = row.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise TypeError(f"{where} field {name!r} must be a string, got {type(value).__name__} {value!r}")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"{where} field {name!r} is not valid Unicode: a lone surrogate "
                                 f"{value[error.start]!r} at character {error.start}") from None
            for token in self.media_tokens():
                if token in value:
                    raise ValueError(f"{where} field {name!r} contains the backbone's media token {token!r}; pass "
                                     f"media in the 'image' / 'video' fields (the processor inserts their tokens)")

    def _user_turn(self, row: dict, where: str, extra_text: str | None = None) -> tuple[dict, dict]:
        """The user message of `row` and its loaded media (`{"images": [...], "videos": [...]}`, plus `"names"`:
        the row, field and path of each, for error messages)."""
        row = as_row(row, where)
        unknown = set(row) - {"image", "video", "text", "instruction", "ecr"}
        if unknown:
            logger.warning_once(f"TTEProcessor ignores row fields {sorted(unknown)}")
        self.check_row_text(row, where)
        content, media = [], {"images": [], "videos": [], "names": {"images": [], "videos": []}}
        for field, kind, load in (("image", "images", load_image), ("video", "videos", load_video)):
            source = row.get(field)
            if source is None:
                continue
            name = f"{where} field {field!r}"
            media[kind].append(load(source, name))
            media["names"][kind].append(f"{name} ({_short(source)})" if isinstance(source, (str, os.PathLike))
                                        else name)
            content.append({"type": field})
        text = (row.get("text") or "").strip()
        if not text and not content:
            raise ValueError(f"{where}: needs an image, a video or non-empty text")
        words = [(row.get("instruction") or "").strip(), text, (extra_text or "").strip()]
        content.append({"type": "text", "text": "\n".join(w for w in words if w)})
        return {"role": "user", "content": content}, media

    def _batch(self, texts: list[str], media: list[dict], padding_side: str) -> BatchFeature:
        images = [image for m in media for image in m["images"]] or None
        videos = [video for m in media for video in m["videos"]] or None
        try:
            return self.backbone(text=texts, images=images, videos=videos, padding=True, padding_side=padding_side,
                                 return_tensors="pt")
        except ValueError as error:
            culprit = self._failing_media(media)
            if culprit is None:
                raise
            raise ValueError(f"{culprit}: the backbone processor rejects it: {error}") from error

    def _failing_media(self, media: list[dict]) -> str | None:
        """The name (row, field, path) of the first image or video that the backbone's image / video processor
        rejects on its own (e.g. an extreme aspect ratio), or `None`."""
        for row_media in media:
            for kind, processor in (("images", self.image_processor), ("videos", self.video_processor)):
                for item, name in zip(row_media[kind], row_media["names"][kind], strict=True):
                    try:
                        processor(**{kind: [item]}, return_tensors="pt")
                    except ValueError:
                        return name
        return None

    @staticmethod
    def _rows(rows, method: str) -> list:
        """`rows` as a list, or a `TypeError` (a dict would iterate its keys) / `ValueError` (no rows)."""
        if isinstance(rows, (Mapping, str, bytes)) or not isinstance(rows, Iterable):
            hint = "; wrap a single row in a list" if isinstance(rows, Mapping) else ""
            raise TypeError(f"{method} expects a list of rows (dicts), got a {type(rows).__name__}{hint}")
        rows = list(rows)
        if not rows:
            raise ValueError(f"{method} needs at least one row")
        return rows

    # ---------------------------------------------------------------- ECR
    def _num_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _fit(self, build, text: str, limit: int) -> str | None:
        """`build(prefix)` for the longest token prefix of `text` whose result has at most `limit` tokens (`None`
        when even `build("")` is too long)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = min(len(ids), max(limit - self._num_tokens(build("")), 0))
        while True:
            candidate = build(self.tokenizer.decode(ids[:keep]).strip())
            excess = self._num_tokens(candidate) - limit
            if excess <= 0:
                return candidate
            if keep == 0:
                return None
            keep = max(keep - excess, 0)

    def truncate_ecr(self, ecr: str, max_tokens: int | None = None) -> str:
        """
        Cut `ecr` to `max_tokens` tokens (default `self.max_ecr_tokens`), logging a warning when it cuts. The
        reasoning goes first so the `Answer:` line survives; an answer that alone exceeds the budget is kept and cut
        itself (the reasoning is dropped). An ECR without an answer is cut at the token limit.
        """
        limit = max_tokens or self.max_ecr_tokens
        length = self._num_tokens(ecr)
        if length <= limit:
            return ecr
        logger.warning(f"Truncating an ECR of {length} tokens to max_ecr_tokens={limit}")
        parsed = parse_ecr(ecr)
        if parsed.answer is not None:
            def build(reasoning: str) -> str:
                if parsed.think is not None:
                    return format_ecr(reasoning, parsed.answer)
                return f"{reasoning} {format_ecr(None, parsed.answer)}".strip()  # plain text before the answer

            reasoning = parsed.think if parsed.think is not None else ecr[:_ANSWER.search(ecr).start()].strip()
            if self._num_tokens(build("")) <= limit:
                return self._fit(build, reasoning, limit)
            logger.warning(f"The answer of an ECR alone exceeds max_ecr_tokens={limit}: dropping its reasoning and "
                           f"cutting the answer")
            cut = self._fit(lambda answer: format_ecr(None, answer), parsed.answer, limit)
            if cut is not None:
                return cut
        return self.tokenizer.decode(self.tokenizer(ecr, add_special_tokens=False)["input_ids"][:limit])

    def embedder_ecr(self, ecr: str | None) -> str:
        """The ECR text the embedder reads for `ecr` under this processor's `ecr_mode`."""
        if ecr is None or self.ecr_mode == "none":
            return ""
        if self.ecr_mode == "answer_only":
            ecr = answer_only(ecr)
        return self.truncate_ecr(ecr.strip())

    # ---------------------------------------------------------------- embedder inputs
    def embedder_text(self, user_turn: dict, ecr: str | None) -> str:
        """Chat prompt + ECR as the assistant turn, ending at the end-of-turn token (whose state is pooled)."""
        prompt = self.backbone.apply_chat_template([user_turn], tokenize=False, add_generation_prompt=True)
        return prompt + self.embedder_ecr(ecr) + self.tokenizer.eos_token

    def _embedder_batch(self, rows: list[dict], side: str, method: str, padding_side: str) -> BatchFeature:
        texts, media = [], []
        for index, row in enumerate(self._rows(rows, method)):
            row = as_row(row, f"{side} row {index}")
            turn, row_media = self._user_turn(row, f"{side} row {index}")
            texts.append(self.embedder_text(turn, row.get("ecr")))
            media.append(row_media)
        return self._batch(texts, media, padding_side)

    def process_queries(self, rows: list[dict], padding_side: str = "right") -> BatchFeature:
        """Embedder inputs for query rows (`image`, `video`, `text`, `instruction`, `ecr`)."""
        return self._embedder_batch(rows, "query", "process_queries", padding_side)

    def process_targets(self, rows: list[dict], padding_side: str = "right") -> BatchFeature:
        """Embedder inputs for target/candidate rows (same fields as queries)."""
        return self._embedder_batch(rows, "target", "process_targets", padding_side)

    # ---------------------------------------------------------------- reasoner inputs
    def reasoner_messages(self, row: dict, task_type: str, side: str = "query", hint: str | None = None,
                          where: str = "row", dataset: str | None = None,
                          prompts: PromptRegistry | None = None) -> tuple[list[dict], dict]:
        """Chat messages asking a reasoner for the ECR of `row`, and the row's media. The instruction is the one
        `prompts` (default `self.prompts`) gives `dataset` and `side` (the task type's for a dataset it does not
        list). `hint` (teacher runs on training data) is the ground-truth target, which the reasoner is told to use
        but not to reveal."""
        if task_type not in REASONER_PROMPTS:
            raise ValueError(f"task_type must be one of {list(TASK_TYPES)}, got {task_type!r}")
        if side not in SIDES:
            raise ValueError(f"side must be one of {list(SIDES)}, got {side!r}")
        directive = (prompts or self.prompts).prompt(dataset, task_type, side, hint)
        turn, media = self._user_turn(row, where, extra_text=directive)
        return [turn], media

    def process_reasoner_inputs(self, rows: list[dict], task_type: str, side: str = "query",
                                hints: list[str | None] | None = None, dataset: str | None = None) -> BatchFeature:
        """Left-padded generation inputs asking a reasoner for each row's ECR (rows of `dataset`, see
        `reasoner_messages`)."""
        rows = self._rows(rows, "process_reasoner_inputs")
        hints = hints or [None] * len(rows)
        texts, media = [], []
        for index, (row, hint) in enumerate(zip(rows, hints, strict=True)):
            messages, row_media = self.reasoner_messages(row, task_type, side, hint, where=f"{side} row {index}",
                                                         dataset=dataset)
            texts.append(self.backbone.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            media.append(row_media)
        return self._batch(texts, media, padding_side="left")


def as_registry(prompts) -> PromptRegistry:
    """A `PromptRegistry` as given, or the shipped one with the YAML file `prompts` read over it."""
    return prompts if isinstance(prompts, PromptRegistry) else PromptRegistry.load(prompts)


TTEProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["ParsedECR", "PromptRegistry", "TTEProcessor", "answer_only", "as_registry", "format_ecr", "parse_ecr"]
