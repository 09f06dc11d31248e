"""What the reasoner is asked: the ECR prompt registry, per dataset and side.

A registry is data (`reasoner_prompts.yaml`, shipped beside this file and saved into every processor folder):

    name: tte-ecr              # the prompt set, recorded with every trace
    version: 1
    format: "... 'Answer: <{answer}>'."   # the closing instruction; {answer} is the family's answer format
    hint: "... {hint} ..."     # appended for teacher runs on training data only
    families:                  # a directive per side, and what the answer line holds
      vqa:
        query: Reason in one or two sentences grounded in the image, then answer the question.
        target: Restate this answer and the kind of question it answers.
        answer: the short answer            # or {query: ..., target: ...}
    datasets:                  # training subsets and evaluation tasks -> their family
      OK-VQA: vqa

An empty `format` and empty directives ask with the row alone, as the embedder sees it (the prompt of a model trained
jointly to write ECR after the embedder's prompt, `TTEContrastiveConfig.sft_loss_weight`).
A dataset it does not list gets its task type's built-in prompt (`TASK_TYPE_PROMPTS`). A custom file is read over
the shipped one (`PromptRegistry.load(path)`): its families and datasets replace those of the same name.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from pathlib import Path

import yaml

REGISTRY_FILE = "reasoner_prompts.yaml"
SIDES = ("query", "target")
DEFAULT_FORMAT = ("Think step by step inside <think> </think>, then write the final answer on its own line as "
                  "'Answer: <{answer}>'.")
DEFAULT_HINT = ("Hint (the ground-truth target): {hint}. Use it to guide your reasoning, but do not reveal or copy "
                "it.")
# Per task type: (query-side directive, target-side directive), for datasets the registry does not list. The query
# side reasons towards what a matching target would contain; the target side summarises what a query would ask.
TASK_TYPE_PROMPTS = {
    "classification": (
        "Reason about the visual evidence and decide which class label fits best.",
        "Describe what this class label means and what visual evidence would support it.",
    ),
    "vqa": (
        "Reason about the image to answer the question.",
        "Restate this answer and the kind of question it answers.",
    ),
    "retrieval": (
        "Reason about the content and describe the candidate that should be retrieved.",
        "Summarise the key content of this candidate that a search query would mention.",
    ),
    "composed_retrieval": (
        "Reason about the reference image and the requested modification, then describe the resulting target.",
        "Summarise the key content of this candidate that a modification query would describe.",
    ),
    "grounding": (
        "Reason about where the referred object is and describe it and its surroundings.",
        "Describe the object shown in this region.",
    ),
    "video": (
        "Reason about the frames in order: the events, actions and objects, then answer.",
        "Summarise the events and content of this video or description.",
    ),
    "video_classification": (
        "Reason about the frames in order: the actions, objects and setting, then name the category of the video.",
        "Describe what this category looks like in a video: the typical actions, objects and setting.",
    ),
    "video_qa": (
        "Reason about the frames in order to answer the question, then give the answer option's text.",
        "Restate this answer option and what a video would have to show for it to be right.",
    ),
    "video_retrieval": (
        "Reason about the description and describe the video that should be retrieved: its scenes, actions and "
        "objects in order.",
        "Summarise the events and content of this video in order, as a description of it would.",
    ),
    "moment_retrieval": (
        "Reason about the moment the query describes and what a short clip of exactly that moment would show.",
        "Summarise what happens in this short clip: the actions, objects and setting.",
    ),
    "visual_document": (
        "Reason about what information the query asks for and what a relevant page would contain.",
        "Summarise the information this document page contains.",
    ),
}


@functools.lru_cache(maxsize=1)
def _shipped_data() -> tuple[dict | None, str]:
    """The shipped file's registry, read once per process (every processor and backend starts from it)."""
    path = Path(__file__).with_name(REGISTRY_FILE)
    return (PromptRegistry.read(path).data, str(path)) if path.is_file() else (None, "built-in")


class PromptRegistry:
    r"""
    The reasoner prompts of every dataset and side (see the module docstring for the file layout).

    Args:
        data (`dict`, *optional*): a parsed registry; `None` is an empty one (task-type prompts only).
        source (`str`, *optional*): where it was read from, for error messages.
    """

    def __init__(self, data: dict | None = None, source: str = "built-in"):
        self.data = copy.deepcopy(data or {"name": "tte-task-types", "version": 1})
        self.source = source
        self.check()

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def shipped(cls) -> PromptRegistry:
        """The registry shipped beside this module, or the task-type prompts alone where it is absent (a folder
        saved before registries existed, loaded as remote code)."""
        data, source = _shipped_data()
        return cls(data, source=source)

    @classmethod
    def read(cls, path) -> PromptRegistry:
        """The registry in the YAML file `path` as it is (no merging)."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"reasoner prompts {path}: cannot read it as YAML: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"reasoner prompts {path}: expected a YAML mapping, got {type(data).__name__}")
        return cls(data, source=str(path))

    @classmethod
    def load(cls, path=None) -> PromptRegistry:
        """The shipped registry, with the file `path` (when given) read over it: its families and datasets replace
        those of the same name, its other keys (name, version, format, hint) replace the shipped ones."""
        base = cls.shipped()
        if path is None:
            return base
        custom = cls.read(path)
        merged = {**base.data, **{k: v for k, v in custom.data.items() if k not in ("families", "datasets")}}
        for section in ("families", "datasets"):
            merged[section] = {**base.data.get(section, {}), **custom.data.get(section, {})}
        return cls(merged, source=f"{base.source} + {path}")

    def save(self, folder) -> Path:
        """Write the registry as `<folder>/reasoner_prompts.yaml`; returns the path."""
        path = Path(folder) / REGISTRY_FILE
        path.write_text(yaml.safe_dump(self.data, sort_keys=False, allow_unicode=True, width=120), encoding="utf-8")
        return path

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """`ValueError` naming the file and entry when a dataset names an unknown family or a family lacks a side."""
        families = self.data.get("families") or {}
        for name, family in families.items():
            if not isinstance(family, dict) or not all(isinstance(family.get(side), str) for side in SIDES):
                raise ValueError(f"reasoner prompts {self.source}: family {name!r} needs a 'query' and a 'target' "
                                 f"directive (strings)")
            answer = family.get("answer", "answer")
            if not isinstance(answer, str) and not (isinstance(answer, dict) and set(answer) <= set(SIDES)):
                raise ValueError(f"reasoner prompts {self.source}: family {name!r}: 'answer' must be a string or a "
                                 f"mapping of query/target to strings")
        for dataset, family in (self.data.get("datasets") or {}).items():
            if family not in families:
                raise ValueError(f"reasoner prompts {self.source}: dataset {dataset!r} names the unknown family "
                                 f"{family!r}")
        for key, field in (("format", "{answer}"), ("hint", "{hint}")):
            if self.data.get(key) and field not in str(self.data[key]):
                raise ValueError(f"reasoner prompts {self.source}: {key!r} must contain {field}")

    # ------------------------------------------------------------------ prompts
    @property
    def name(self) -> str:
        """`name@version` of this prompt set, as recorded with each trace."""
        return f"{self.data.get('name', 'unnamed')}@{self.data.get('version', 0)}"

    def family(self, dataset: str | None) -> str | None:
        """The family the registry gives `dataset`, or `None` (the task type's prompt applies)."""
        return (self.data.get("datasets") or {}).get(dataset) if dataset is not None else None

    def prompt(self, dataset: str | None, task_type: str, side: str, hint: str | None = None) -> str:
        """The instruction for `side` of a row of `dataset`: the family's (or task type's) directive, the hint
        sentence when `hint` is given (teacher runs on training data only), then the answer format."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {list(SIDES)}, got {side!r}")
        name = self.family(dataset)
        if name is None:
            if task_type not in TASK_TYPE_PROMPTS:
                raise ValueError(f"task_type must be one of {list(TASK_TYPE_PROMPTS)}, got {task_type!r}")
            text, answer = TASK_TYPE_PROMPTS[task_type][SIDES.index(side)], "answer"
        else:
            family = self.data["families"][name]
            text, answer = family[side], family.get("answer", "answer")
            answer = answer.get(side, "answer") if isinstance(answer, dict) else answer
        lines = [text.strip()]
        if hint:
            lines.append(self.data.get("hint", DEFAULT_HINT).format(hint=hint))
        lines.append(self.data.get("format", DEFAULT_FORMAT).format(answer=answer))
        return "\n".join(line for line in lines if line)

    def fingerprint(self, dataset: str | None, task_type: str, side: str, hint: str | None = None) -> str:
        """A short hash of the prompt of `(dataset, task_type, side, hint)`: part of every request hash, so changing
        a prompt makes the traces it produced stale."""
        return hashlib.sha256(self.prompt(dataset, task_type, side, hint).encode("utf-8")).hexdigest()[:16]


__all__ = ["DEFAULT_FORMAT", "DEFAULT_HINT", "PromptRegistry", "REGISTRY_FILE", "TASK_TYPE_PROMPTS"]
