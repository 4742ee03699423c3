"""A job's command line, built from its config class: each setting's flag and help come from
its field (cxr.options), `--config FILE` reads a preset, a YAML or JSON file or a recorded
run, and the flags given beside it win.

Order: the config's defaults, then the file, then the flags that set several settings at
once (`--split`, `--appearance-augment`), then each setting's own flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from importlib import resources as package_files

from cxr.errors import UserError
from cxr.options import Leaf, from_mapping, is_config, leaves, read_mapping
from cxr.runtime import setup_logging

JOB_NAMES = ("preprocess", "train", "tune", "evaluate", "predict")  # a preset's sections (cxr.cli.command.JOBS)
PRESETS = "cxr.cli.presets"  # the package of the named presets: <name>.yaml, one section per job


def recorded_config(record: dict) -> dict:
    """A file's settings for a job: a record's `config` (run.json, a manifest, a report), or
    the file itself."""
    inner = record.get("config")
    return inner if isinstance(inner, dict) else record


@dataclasses.dataclass(frozen=True)
class Job:
    """One job's command line: `cxr <name>` and jobs/<name>.py."""

    name: str
    description: str
    config: type
    # Runs the job on its config (importing the stage's heavy modules only then) and returns
    # the summary to print.
    stage: Callable[[object], str]
    # The settings of a --config file's mapping (a record's `config` by default).
    from_record: Callable[[dict], dict] = recorded_config
    # The config once built, completed (the tuning job reads its --space file here).
    finish: Callable[[object], object] = lambda config: config
    uses_gpu: Callable[[object], bool] = lambda config: bool(getattr(config, "gpu", False))

    # --- the parser -------------------------------------------------------------------------

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", metavar="FILE",
                            help="settings from a YAML or JSON file, a recorded run.json (manifest.json, "
                                 "sweep.json, report.json, summary.json), or a preset: "
                                 f"{', '.join(preset_names())}; the flags given beside it win")
        groups: dict[str, argparse._ArgumentGroup] = {}
        for setting in leaves(self.config):
            target = self._group(parser, groups, setting)
            for shorthand in setting.option.shorthands:
                if shorthand.type is None:
                    target.add_argument(shorthand.flag, dest=_shorthand_dest(setting, shorthand.flag),
                                        action="store_true", default=argparse.SUPPRESS, help=shorthand.help)
                else:
                    target.add_argument(shorthand.flag, dest=_shorthand_dest(setting, shorthand.flag),
                                        type=shorthand.type, metavar=shorthand.metavar,
                                        default=argparse.SUPPRESS, help=shorthand.help)
            if setting.option.flag and not is_config(setting.type):
                target.add_argument(setting.option.flag, dest=setting.name, default=argparse.SUPPRESS,
                                    help=_help(setting, _default(self.config, setting.name)), **_kind(setting))
        parser.add_argument("--verbose", action="store_true", help="also show the libraries' own log lines")

    def _group(self, parser, groups: dict, setting: Leaf):
        """The nested config a setting belongs to, as an argument group (its docstring's title)."""
        owner = setting.name.split(".")[0] if "." in setting.name else None
        if owner is None or owner == "train":  # tune: the training options are the job's own
            return parser
        if owner not in groups:
            title = (_nested_type(self.config, owner).__doc__ or owner).strip().splitlines()[0]
            groups[owner] = parser.add_argument_group(title.split(":")[0].lower())
        return groups[owner]

    def parse_args(self, argv: list[str] | None = None) -> argparse.Namespace:
        parser = argparse.ArgumentParser(description=self.description)
        self.add_arguments(parser)
        return parser.parse_args(argv)

    # --- the config -------------------------------------------------------------------------

    def build_config(self, args: argparse.Namespace):
        """The config from the defaults, the --config file and the flags given, in that order."""
        given = vars(args)
        where = "the command line"
        values: dict = {}
        if given.get("config"):
            where = f"--config {given['config']}"
            values = self.file_settings(given["config"], where)
        for setting in leaves(self.config):
            for shorthand in setting.option.shorthands:
                dest = _shorthand_dest(setting, shorthand.flag)
                if dest in given:
                    for name, value in shorthand.to_settings(given[dest]).items():
                        _put(values, f"{setting.name}.{name}", value)
        for setting in leaves(self.config):
            if setting.name in given:
                value = given[setting.name]
                _put(values, setting.name, setting.option.parse(value) if setting.option.parse else value)
        missing = [setting.option.flag for setting in leaves(self.config)
                   if setting.required and _get(values, setting.name) is None]
        if missing:
            raise UserError(f"the following arguments are required: {', '.join(missing)}")
        return self.finish(from_mapping(self.config, values, where))

    def file_settings(self, path: str, where: str) -> dict:
        """A --config file's settings for this job, as nested plain data."""
        text_path = preset_path(path) or path
        mapping = read_mapping(text_path, where)
        if mapping is None:
            return {}
        if not isinstance(mapping, dict):
            raise UserError(f"{where}: expected a mapping of settings, got {type(mapping).__name__}")
        if mapping and set(mapping) <= set(JOB_NAMES):  # a preset: one section per job
            section = mapping.get(self.name)
            if section is None and self.name == "tune" and "train" in mapping:
                # A sweep's trials follow the training recipe; the run's name is not the sweep's.
                section = {"train": {key: value for key, value in mapping["train"].items() if key != "name"}}
            if section is None:
                raise UserError(f"{where}: has settings for {', '.join(mapping)}, none for {self.name}")
            mapping = section
        return self.from_record(mapping)

    # --- the entry points -------------------------------------------------------------------

    def main(self, argv: list[str] | None = None) -> int:
        """`python jobs/<name>.py ARGS`."""
        return self.run(self.parse_args(argv))

    def run(self, args: argparse.Namespace) -> int:
        """The job, from its parsed arguments (`cxr <name>`, main)."""
        config = self.build_config(args)  # bad settings answer before Ray or TensorFlow load
        setup_logging(args.verbose, gpu=self.uses_gpu(config))
        print(self.stage(config))
        return 0


def preset_names() -> list[str]:
    return sorted(entry.name.removesuffix(".yaml") for entry in package_files.files(PRESETS).iterdir()
                  if entry.name.endswith(".yaml"))


def preset_path(name: str) -> str | None:
    """The file of the preset `name`, or None when `name` is a path, not a preset's name."""
    if name in preset_names():
        return str(package_files.files(PRESETS).joinpath(f"{name}.yaml"))
    return None


def _nested_type(config_class: type, name: str) -> type:
    return typing.get_type_hints(config_class)[name]


def _shorthand_dest(setting: Leaf, flag: str) -> str:
    return f"{setting.name} {flag}"


def _kind(setting: Leaf) -> dict:
    """argparse's keywords for a setting's flag: its action or type, choices and metavar."""
    option = setting.option
    if setting.type is bool:
        return {"action": argparse.BooleanOptionalAction}
    keywords = {"metavar": option.metavar or setting.name.rsplit(".", 1)[-1].upper()}
    if option.choices:
        keywords = {"choices": option.choices}
    if option.repeat:
        return {**keywords, "action": "append"}
    if option.parse:
        return keywords  # the text, read by parse
    base = _base_type(setting.type)
    if base not in (int, float, str):
        raise TypeError(f"{setting.name}: a {setting.type} setting needs a parse function for its flag")
    return {**keywords, "type": base}


def _base_type(kind):
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        options = [each for each in typing.get_args(kind) if each is not type(None)]
        return options[0] if len(options) == 1 else None
    return kind


def _default(config_class: type, dotted: str):
    """A setting's default in the job's default config (a nested config's default may differ
    from its class's own: the training job's augmentation adds appearance)."""
    first, _, rest = dotted.partition(".")
    each = next(field for field in dataclasses.fields(config_class) if field.name == first)
    value = each.default_factory() if each.default_factory is not dataclasses.MISSING else each.default
    for part in rest.split(".") if rest else ():
        value = getattr(value, part)
    return value


def _help(setting: Leaf, default) -> str:
    """The setting's help, with its default unless the help says it."""
    text = setting.option.help
    if setting.required or "default" in text or default is None or isinstance(default, bool) and not default:
        return text
    if isinstance(default, bool):
        return f"{text} (default: on)"
    if isinstance(default, tuple):
        return text if not default else f"{text} (default: {','.join(map(str, default))})"
    return f"{text} (default: {default:g})" if isinstance(default, float) else f"{text} (default: {default})"


def _put(values: dict, dotted: str, value) -> None:
    *outer, last = dotted.split(".")
    for part in outer:
        inner = values.get(part)
        values[part] = inner = dict(inner) if isinstance(inner, dict) else {}
        values = inner
    values[last] = value


def _get(values: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(values, dict):
            return None
        values = values.get(part)
    return values
