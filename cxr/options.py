"""Each setting's one source: a config field carries its flag, its help and whether it defines
a run; parsers, error messages and resume checks read them here.

A config (cxr/config/) is a frozen dataclass whose fields are made with `setting(...)`.
Nested configs (ClaheConfig inside PreprocessConfig, TrainConfig inside TuneConfig) are
walked through: each leaf setting has a dotted name ("clahe.clip_limit") and, unless it
is set only through a file or a shorthand, its own flag. `from_mapping` builds a config
from nested plain data (a YAML or JSON file, a recorded run.json), checking every name and
type, so a file is held to the same rules as the flags.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field

from cxr.errors import UserError


@dataclass(frozen=True)
class Shorthand:
    """A flag that sets several settings at once (`--split 0.8,0.1,0.1`, `--no-augment`).

    `to_settings` turns the flag's value into settings, by dotted name relative to the config
    that holds the field; `type` reads the flag's text (None: a switch, which takes no value).
    """

    flag: str
    help: str
    to_settings: Callable[[object], dict[str, object]]
    type: Callable[[str], object] | None = None
    metavar: str | None = None


@dataclass(frozen=True)
class Option:
    """What the command line and the messages know about one setting.

    `flag` None: set only by a config file or a shorthand. `defines_run` False: the setting
    says where or how a job executes, not what it makes (a run may resume with another).
    `parse` reads the flag's text (default: the field's type); with `repeat`, the flag may
    be given again and `parse` takes the list.
    """

    flag: str | None
    help: str = ""
    defines_run: bool = True
    metavar: str | None = None
    choices: tuple | None = None
    parse: Callable | None = None
    repeat: bool = False
    shorthands: tuple[Shorthand, ...] = ()


def setting(default=MISSING, *, factory=MISSING, **option) -> dataclasses.Field:
    """A config field and its Option (see Option for the keywords)."""
    return field(default=default, default_factory=factory, metadata={"option": Option(**option)})


@dataclass(frozen=True)
class Leaf:
    """One setting of a config class: its dotted name, field, Option and type."""

    name: str
    field: dataclasses.Field
    option: Option
    type: object

    @property
    def required(self) -> bool:
        return self.field.default is MISSING and self.field.default_factory is MISSING


def is_config(kind) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


@functools.cache
def leaves(config_class: type) -> tuple[Leaf, ...]:
    """Every setting of `config_class`, nested configs walked through, in field order.

    A nested config's field is itself a leaf too when it has shorthands (the flags that set
    its parts at once), listed before its parts.
    """
    found = []
    hints = typing.get_type_hints(config_class)
    for each in dataclasses.fields(config_class):
        option = each.metadata.get("option")
        if option is None:
            raise TypeError(f"{config_class.__name__}.{each.name} is not a setting(): it has no flag or help")
        if is_config(hints[each.name]):
            if option.shorthands:
                found.append(Leaf(each.name, each, option, hints[each.name]))
            found += [dataclasses.replace(leaf, name=f"{each.name}.{leaf.name}")
                      for leaf in leaves(hints[each.name])]
        else:
            found.append(Leaf(each.name, each, option, hints[each.name]))
    return tuple(found)


def leaf(config_class: type, name: str) -> Leaf:
    for each in leaves(config_class):
        if each.name == name:
            return each
    raise KeyError(f"{config_class.__name__} has no setting {name!r}")


def flag(config_class: type, name: str) -> str:
    """How messages name a setting: its flag, or the setting itself for one without a flag."""
    return leaf(config_class, name).option.flag or name  # as a config file spells it


def run_defining(config_class: type) -> tuple[str, ...]:
    """The dotted names of the settings that define what a job makes."""
    return tuple(each.name for each in leaves(config_class) if each.option.defines_run)


# --- configs from plain data (config files, recorded runs) ---------------------------------


def from_mapping(config_class: type, values: dict, where: str, base=None):
    """`config_class` with `values` (nested plain data, as a file or `to_dict` gives it)
    over `base` (default: the class's defaults); every name and type checked."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
    hints = typing.get_type_hints(config_class)
    names = {each.name for each in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - names, key=str)
    if unknown:
        raise UserError(f"{where}: unknown setting {unknown[0]!r} for {config_class.__name__} "
                        f"(known: {', '.join(sorted(names))})")
    given = {}
    for name, value in values.items():
        kind = hints[name]
        if is_config(kind):
            inner_base = getattr(base, name) if base is not None else _default(config_class, name)
            given[name] = from_mapping(kind, value, f"{where}: {name}", inner_base) if value is not None \
                else inner_base
        else:
            given[name] = coerce(kind, value, f"{where}: {name}")
    if base is not None:
        return dataclasses.replace(base, **given)
    return config_class(**given)


def _default(config_class: type, name: str):
    each = next(f for f in dataclasses.fields(config_class) if f.name == name)
    return each.default_factory() if each.default_factory is not MISSING else each.default


def coerce(kind, value, where: str):
    """`value` as a setting of type `kind` takes it (JSON's lists become tuples); a wrong
    type is one line naming the setting."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        problems = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, where)
            except UserError as refused:
                problems.append(str(refused))
        raise UserError(problems[0] if len(problems) == 1 else f"{where}: {value!r} is not a valid value")
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        inner = typing.get_args(kind)
        if len(inner) == 2 and inner[1] is Ellipsis:
            return tuple(coerce(inner[0], item, where) for item in value)
        if len(inner) != len(value):
            raise UserError(f"{where}: expected {len(inner)} values, got {list(value)}")
        return tuple(coerce(each, item, where) for each, item in zip(inner, value))
    if is_config(kind):
        return from_mapping(kind, value, where) if isinstance(value, dict) else _wrong(kind, value, where)
    if kind is bool:
        return value if isinstance(value, bool) else _wrong(kind, value, where)
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _wrong(kind, value, where)
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        return _wrong(kind, value, where)
    if kind is str:
        return value if isinstance(value, str) else _wrong(kind, value, where)
    return value


def _wrong(kind, value, where: str):
    name = getattr(kind, "__name__", str(kind))
    raise UserError(f"{where}: expected {'a' if name[0] not in 'aeiou' else 'an'} {name}, got {_shown(value)}")


def _shown(value) -> str:
    """A file's value as an error shows it: as JSON; a YAML alias that holds itself, or a
    value JSON has no form for (a YAML date), by what it is."""
    try:
        return json.dumps(value)
    except ValueError:  # json's "Circular reference detected"
        return f"a {type(value).__name__} that contains itself"
    except TypeError:
        return repr(value)


def read_mapping(path: str, where: str):
    """The YAML or JSON document at `path` (local or any storage URI), parsed; `where` begins
    every error (`--config FILE`)."""
    from cxr import storage  # pyarrow: only once a file is read

    location = storage.resolve(path)
    if not storage.is_file(location):
        raise UserError(f"{where}: no such file")
    try:
        text = storage.read_bytes(location).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{where}: not a text file") from None
    if path.lower().endswith(".json"):
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError as error:
            raise UserError(f"{where}: not valid JSON: {error.msg} "
                            f"(line {error.lineno}, column {error.colno})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise UserError(f"{where}: not valid YAML: {problem}{at}") from None
