"""One command-line style for every TTE script.

Every CLI (`train.*`, `eval.*` and the benchmarks) parses its dataclasses with `TTEParser`, TRL's `TrlParser`:

- options are the dataclass fields, `--snake_case` (the `--kebab-case` spelling is accepted too);
- `--config YAML` sets any of them from a YAML mapping, and options on the command line override it;
- the same things have the same names everywhere: `--model_name_or_path` (short: `--model`), `--output_dir`
  (`--out`), `--ecr_store` (`--store`), `--datasets` (JSON objects or recipe files, see
  `train.data.read_datasets`); the short names are accepted on the command line and as YAML keys.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, is_dataclass

import yaml
from trl import TrlParser

ALIASES = {"model": "model_name_or_path", "out": "output_dir", "store": "ecr_store"}


class TTEParser(TrlParser):
    """`TrlParser` with the project's shared option names, a short usage line showing `--config`, and errors that
    name the `--config` file.

    Args:
        dataclass_types: the dataclasses whose fields are the options.
        prog (`str`): the module, e.g. `"train.generate_ecr"` (shown as `python -m train.generate_ecr`).
        description (`str`, *optional*): the module's docstring, shown by `--help` as written.
    """

    def __init__(self, dataclass_types, prog: str, description: str | None = None):
        super().__init__(dataclass_types, prog=f"python -m {prog}", description=description,
                         formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        self.usage = self._short_usage()
        self.add_argument("--config", metavar="YAML",
                          help="YAML mapping of option: value; options on the command line override it")
        self._dests = {f.name for cls in self.dataclass_types for f in fields(cls)}
        short = [f"--{name} = --{target}" for name, target in ALIASES.items() if self.canonical(name) == target]
        self.epilog = f"Short names: {', '.join(short)}." if short else None

    def _short_usage(self) -> str:
        required = [f"--{a.dest} {a.dest.split('_')[-1].upper()}" for a in self._actions if a.required]
        return " ".join(["%(prog)s [--config YAML]", *required, "[--OPTION VALUE ...]"])

    def canonical(self, name: str) -> str:
        """The field a short name stands for (`model` -> `model_name_or_path`) when this parser has it."""
        target = ALIASES.get(name)
        return target if name not in self._dests and target in self._dests else name

    def _canonical_argv(self, argv: list[str]) -> list[str]:
        out = []
        for token in argv:
            flag, equals, value = token[2:].partition("=")
            if not token.startswith("--"):
                out.append(token)
            elif flag == "config" and equals:
                out += ["--config", value]
            else:
                name = flag.replace("-", "_")
                out.append(f"--{self.canonical(name) if name in ALIASES else flag}{equals}{value}")
        return out

    def check_config(self, path: str) -> None:
        """`ValueError` naming `path` when it is not a YAML mapping of this script's options."""
        try:
            with open(path, encoding="utf-8") as handle:
                config = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"--config {path}: cannot read it as YAML: {error}") from error
        if not isinstance(config, dict):
            raise ValueError(f"--config {path}: expected a YAML mapping of option: value (e.g. 'learning_rate: "
                             f"1e-4'), got {type(config).__name__}")
        unknown = sorted(k for k in config if k != "env" and self.canonical(k) not in self._dests)
        if unknown:
            raise ValueError(f"--config {path}: unknown options {unknown} (see {self.prog} --help)")

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        """TRL's: YAML values become defaults; short names are accepted as keys."""
        return super().set_defaults_with_config(**{self.canonical(key): value for key, value in kwargs.items()})

    def parse(self, argv: list[str] | None = None) -> tuple:
        """The dataclass instances from `--config` and the command line (`sys.argv` when `argv` is `None`)."""
        argv = self._canonical_argv(list(sys.argv[1:] if argv is None else argv))
        if "--config" in argv[:-1]:
            self.check_config(argv[argv.index("--config") + 1])
        return tuple(output for output in self.parse_args_and_config(argv) if is_dataclass(output))


def parse(dataclass_types, prog: str, description: str | None, argv: list[str] | None = None) -> tuple:
    """`TTEParser(dataclass_types, prog, description).parse(argv)`."""
    return TTEParser(dataclass_types, prog, description).parse(argv)


__all__ = ["ALIASES", "TTEParser", "parse"]
