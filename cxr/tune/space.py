"""`--space FILE`: a search space written as YAML or JSON, read into SearchParameters.

The file names each tuned setting of the training job (cxr.config.SEARCH_KINDS) and how a
trial draws it, replacing the default space (cxr.config.DEFAULT_SPACE) as a whole; a
setting the file leaves out takes the command's value, as in the training job:

    learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
    dropout: {uniform: [0.0, 0.5]}
    batch_size: {choice: [16, 32, 64]}
    augment: {uniform: [0.0, 2.0]}     # 1 = the training job's default augmentation
    class_weights: {choice: [true, false]}
    lr_schedule: cosine                 # a plain value: every trial takes it

JSON is the same shape. Anything else is a one-line UserError naming the file and the
entry: a missing or unreadable file, a syntax error (with its line), an empty space, an
unknown setting or kind, bounds out of order, a value of the wrong type. Whether the model
can take every value is TuneConfig's check, on construction.

`space_record` writes a space back in the same shape, so the one recorded with a sweep
can be passed as --space again.
"""

from __future__ import annotations

from cxr.config import SEARCH_KINDS, SearchParameter
from cxr.errors import UserError
from cxr.options import read_mapping

# The kinds a file spells as a one-key mapping; a plain value is "fixed".
DRAWN_KINDS = ("loguniform", "uniform", "choice")
_NUMERIC = ("learning_rate", "dropout", "augment")


def load_space(path: str) -> tuple[SearchParameter, ...]:
    """The search space in the YAML or JSON file at `path` (local or s3://)."""
    where = f"--space {path}"
    return space_parameters(read_mapping(path, where), where)


def space_parameters(entries, where: str) -> tuple[SearchParameter, ...]:
    """The search space of a file's entries (its shape: the module's docstring)."""
    if entries is None or entries == {}:
        raise UserError(f"{where}: the search space is empty; name at least one of {', '.join(SEARCH_KINDS)}")
    if not isinstance(entries, dict):
        raise UserError(f"{where}: expected a mapping of settings to draws, such as "
                        f"`dropout: {{uniform: [0.0, 0.5]}}`, got a {type(entries).__name__}")
    return tuple(_parameter(name, entry, where) for name, entry in entries.items())


def _parameter(name, entry, where: str) -> SearchParameter:
    try:
        if not isinstance(name, str):
            raise UserError(f"{name!r} is not a setting's name")
        if isinstance(entry, dict):
            if len(entry) != 1 or next(iter(entry)) not in DRAWN_KINDS:
                raise UserError(f"{name}: expected one of {', '.join(f'{{{kind}: [...]}}' for kind in DRAWN_KINDS)}, "
                                f"or a plain value, got {entry}")
            ((kind, values),) = entry.items()
            if not isinstance(values, list):
                raise UserError(f"{name}: {kind} takes a list, got {values!r}")
        elif isinstance(entry, list):
            raise UserError(f"{name}: a list is ambiguous; write {{choice: {entry}}} to draw one of them")
        else:
            kind, values = "fixed", [entry]
        return SearchParameter(name, kind, tuple(_number(name, value) for value in values))
    except UserError as error:
        raise UserError(f"{where}: {error}") from None


def _number(name: str, value):
    """A numeric setting's value; PyYAML reads `1e-5` (no dot) as a string, which is taken as
    the number it plainly is rather than refused."""
    if name in _NUMERIC and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # SearchParameter names the wrong type
    return value


def space_record(space: tuple[SearchParameter, ...]) -> dict:
    """The space in the file's shape (JSON-ready): for sweep.json, trials.md and --space."""
    return {parameter.name: parameter.values[0] if parameter.kind == "fixed"
            else {parameter.kind: list(parameter.values)} for parameter in space}


def describe(parameter: SearchParameter) -> str:
    """'learning_rate loguniform 1e-05..0.001', 'batch_size one of 16, 32, 64', 'lr_schedule cosine'."""
    if parameter.kind == "fixed":
        return f"{parameter.name} {parameter.values[0]}"
    if parameter.kind == "choice":
        return f"{parameter.name} one of {', '.join(str(value) for value in parameter.values)}"
    low, high = parameter.values
    return f"{parameter.name} {parameter.kind} {low:g}..{high:g}"
