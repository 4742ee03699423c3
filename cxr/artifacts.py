"""Every file the jobs write, and the one place that knows their names and fields.

The stages talk through files only, so these layouts are the contract between the jobs
(docs/architecture.md draws them):

- shards (`jobs/preprocess.py --output`, `ShardsLayout`): `train/`, `val/`, `test/` Parquet
  files of SHARD_SCHEMA rows, `rejected.parquet` (REJECT_SCHEMA) and `manifest.json`,
  written last: a reader that finds it can trust the rest. `Manifest` is its typed view.
- a run (`jobs/train.py`, `<storage>/<name>/`, `RunLayout`): Ray Train's checkpoints (the
  model and `state.json`), `workers/rank-N.json`, and the export.
- an export (`<run>/model/`, `ExportLayout`): the best model, a copy of the shards'
  manifest (class order and preprocessing for scoring), the training record, the
  history and its learning curve.
- a sweep (`jobs/tune.py`, `<storage>/<name>/`, `SweepLayout`): one run per trial, Ray Tune's
  experiment, the trials table and figure, and the best trial's export as a run of its own.
- a report (`jobs/evaluate.py`, `<run>/report/` by default, `ReportLayout`).
- predictions (`jobs/predict.py --output`, `PredictionsLayout`).

The preprocessing stage builds the manifest's dict (cxr.preprocess.manifest); everything
that reads a manifest reads it here, through `Manifest`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import pyarrow as pa
import pyarrow.parquet as pq

from cxr import storage
from cxr.config import ClaheConfig, LungFocusConfig, MarkingConfig, PreprocessConfig, SplitConfig, SyntheticConfig
from cxr.errors import UserError, one_line


@dataclass(frozen=True)
class _Layout:
    """Where one artifact's files are, under its root folder (local or an s3:// prefix)."""

    root: storage.Location

    @classmethod
    def at(cls, uri: str):
        return cls(storage.resolve(uri))


class _File:
    """A file of a layout: `layout.<attribute>` is the storage.Location of `name` under its root."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, layout: _Layout | None, owner=None):
        return self if layout is None else layout.root.join(self.name)


# ---------------------------------------------------------------- shards

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST_FILE = "manifest.json"
REJECTED_FILE = "rejected.parquet"
# The first pass's output under the shards' root, removed when the job ends.
STAGING_DIR = "_staging"
# In every folder a job writes (shards, a run, a sweep, predictions) while it writes there:
# which job holds it (cxr.claims); removed when the job ends.
CLAIM_FILE = "_cxr_claim.json"
# The settings of a part a manifest predates: what preprocessing did before the part existed.
_BEFORE_RECORDED = {"lungs": {"crop": False, "suppress": False}}

SHARD_SCHEMA = pa.schema([
    ("image_png", pa.binary()),
    ("label", pa.int32()),
    ("class_name", pa.string()),
    ("source_uri", pa.string()),
    # The collection or hospital the image came from (a metadata sheet, --metadata, or the
    # synthetic generator); null when unknown.
    ("source", pa.string()),
    ("content_hash", pa.string()),
    ("marking_score", pa.float32()),
    ("marking_inpainted", pa.bool_()),
    # With a lung focus (--lung-crop/--lung-suppress): whether the lung fields were found in
    # the image (False: cxr.preprocess.lungs' template stood in); null without one.
    ("lungs_found", pa.bool_()),
    # Ground truth of the synthetic source (comma-separated kinds); null for real images.
    ("marking_truth", pa.string()),
    ("orig_height", pa.int32()),
    ("orig_width", pa.int32()),
    # 256-bit perceptual hash, 64 hex digits (cxr.preprocess.fingerprints): near-duplicates.
    ("fingerprint", pa.string()),
])

REJECT_SCHEMA = pa.schema([
    ("source_uri", pa.string()),
    ("class_name", pa.string()),
    ("source", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("marking_score", pa.float32()),
    ("content_hash", pa.string()),
    ("marking_truth", pa.string()),
])


# In the manifest's per-source counts, the images whose source is not known.
UNKNOWN_SOURCE = "(unknown)"


def ordered_sources(names) -> list[str]:
    """Source names sorted, the images of unknown source last: as every table lists them."""
    return sorted(names, key=lambda name: (name == UNKNOWN_SOURCE, name))


def shard_schema(extra_columns: tuple[str, ...] = ()) -> pa.Schema:
    """SHARD_SCHEMA plus the user's own metadata columns (--metadata), all text, as given."""
    return pa.schema(list(SHARD_SCHEMA) + [(name, pa.string()) for name in extra_columns])


@dataclass(frozen=True)
class ShardsLayout(_Layout):
    """A shard set: the output of one preprocessing job."""

    manifest = _File(MANIFEST_FILE)
    rejected = _File(REJECTED_FILE)
    staging = _File(STAGING_DIR)
    claim = _File(CLAIM_FILE)

    @staticmethod
    def shard_name(split: str, index: int) -> str:
        """A shard's path relative to the root, as the manifest lists it."""
        return f"{split}/part-{index:05d}.parquet"

    @staticmethod
    def is_ours(relative_path: str) -> bool:
        """True for a file the preprocessing job writes (and --overwrite may delete)."""
        return (relative_path.split("/", 1)[0] in (*SPLITS, STAGING_DIR)
                or relative_path in (MANIFEST_FILE, REJECTED_FILE))


# ---------------------------------------------------------------- the manifest

# What to do about a damaged shard set, in its one-line errors.
PREPROCESS_AGAIN = "run jobs/preprocess.py again (with --overwrite) to write the shard set anew"

# The class whose sensitivity matters: the project's question is "is it COVID?".
POSITIVE_CLASS = "COVID"


def positive_label(class_names) -> int:
    """The positive class's label: COVID when present, else the last class."""
    return list(class_names).index(POSITIVE_CLASS) if POSITIVE_CLASS in class_names else len(class_names) - 1


@dataclass(frozen=True)
class SplitCounts:
    """Images of one split: per class (in label order) and in all."""

    per_class: Mapping[str, int]
    total: int


@dataclass(frozen=True)
class ShardFile:
    path: str  # relative to the shard set's root
    rows: int


@dataclass(frozen=True)
class Counts:
    """What happened to the inputs: found = kept + rejected, always."""

    found: int
    kept: int
    rejected: int
    rejected_by_reason: Mapping[str, int]
    inpainted: int  # kept with their markings inpainted
    ignored: Mapping[str, int]  # files that were no inputs (masks, unselected classes, ...)
    # Near-duplicate groups kept within one split: max_distance, groups, images_in_groups,
    # group_sizes ({size: groups}); empty in a manifest written before they were counted.
    near_duplicates: Mapping = dataclasses.field(default_factory=dict)
    # With --group-by: column, groups, images_in_groups, groups_with_several_classes,
    # images_without_value; empty otherwise.
    grouped_by: Mapping = dataclasses.field(default_factory=dict)
    # With a lung focus: images whose lung fields were found, and those the template stood in for.
    lungs: Mapping = dataclasses.field(default_factory=dict)
    # Kept images per source (UNKNOWN_SOURCE for those without one), per class, over all splits;
    # summed from the per-split `sources` in a manifest written before it was recorded.
    class_by_source: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class KaggleSource:
    """A Kaggle source's record (the rest of it, such as the mode and the raw cache, stays in the JSON)."""

    dataset: str  # owner/slug
    version: int
    fetched: Mapping[str, Mapping[str, int]]  # per class: downloaded, cached, failed or from_archive


@dataclass(frozen=True)
class Manifest:
    """manifest.json of a shard set (or its copy in an export), read-only and typed.

    Built by `Manifest.from_dict` only, which checks the schema version; `to_dict` gives
    the JSON as it was, for copying it on. It pickles as that JSON, so it travels to Ray
    workers and actors as a plain dict would.
    """

    schema_version: int
    class_names: tuple[str, ...]  # in label order
    image_size: int  # pixels a side: shard images are square, one channel
    splits: Mapping[str, SplitCounts]
    shards: Mapping[str, tuple[ShardFile, ...]]
    counts: Counts
    source_uri: str  # --source as given
    kaggle: KaggleSource | None  # None for other sources
    # Per split, per source (UNKNOWN_SOURCE for images without one): images per class and in
    # all. Empty when no image's source is known (and in manifests older than sources).
    sources: Mapping[str, Mapping[str, SplitCounts]]
    # Sources put whole into the test split (--test-sources): none of their images is in train or val.
    test_sources: tuple[str, ...]
    # Sources put whole into the validation split (--val-sources); none in manifests older than it.
    val_sources: tuple[str, ...]
    extra_columns: tuple[str, ...]  # the user's metadata columns in the shards, beyond SHARD_SCHEMA
    wall_seconds: float  # the whole preprocessing job
    _raw: Mapping = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "manifest", remedy: str = PREPROCESS_AGAIN) -> Manifest:
        """The view of a manifest's JSON; `where` names it in the one-line error for a
        schema version this cxr does not read or a field it lacks, and `remedy` says there
        what to do about a damaged one."""
        if not isinstance(raw, dict):
            raise UserError(f"{where}: holds {type(raw).__name__} JSON, not a manifest; {remedy}")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UserError(f"{where}: schema version {version!r} is not supported "
                            f"(this cxr reads version {SCHEMA_VERSION})")
        try:
            return cls._from_checked(copy.deepcopy(raw), version)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            # A field missing or of the wrong type: a file cut or edited by hand.
            problem = (f"lacks the field {exc.args[0]!r}" if isinstance(exc, KeyError)
                       else f"has a malformed field ({one_line(exc)})")
            raise UserError(f"{where}: {problem}, not a whole manifest; {remedy}") from None

    @classmethod
    def _from_checked(cls, raw: dict, version: int) -> Manifest:
        counts = raw["counts"]
        return cls(
            schema_version=version,
            class_names=tuple(raw["class_names"]),
            image_size=raw["image"]["height"],
            splits=_frozen({split: _split_counts(per_class) for split, per_class in counts["splits"].items()}),
            shards=_frozen({split: tuple(ShardFile(path=f["path"], rows=f["rows"]) for f in files)
                            for split, files in raw["shards"].items()}),
            counts=Counts(found=counts["found"], kept=counts["kept"], rejected=counts["rejected"],
                          rejected_by_reason=_frozen(counts["rejected_by_reason"]), inpainted=counts["inpainted"],
                          ignored=_frozen(counts["ignored"]),
                          near_duplicates=_frozen(counts.get("near_duplicates", {})),
                          grouped_by=_frozen(counts.get("grouped_by", {})), lungs=_frozen(counts.get("lungs", {})),
                          class_by_source=_frozen({name: _frozen(per_class) for name, per_class in counts.get(
                              "class_by_source", _summed_over_splits(counts.get("sources", {}))).items()})),
            source_uri=raw["source"]["uri"],
            kaggle=_kaggle_source(raw["source"].get("kaggle")),
            sources=_frozen({split: _frozen({name: _split_counts(per_class) for name, per_class in per_source.items()})
                             for split, per_source in counts.get("sources", {}).items()}),
            test_sources=tuple(raw["config"]["split"].get("test_sources", ())),
            val_sources=tuple(raw["config"]["split"].get("val_sources", ())),
            extra_columns=tuple(name for name in raw.get("columns", {}) if name not in SHARD_SCHEMA.names),
            wall_seconds=raw["timing"]["wall_seconds"]["total"],
            _raw=raw,
        )

    def __reduce__(self):
        return Manifest.from_dict, (self._raw,)

    def to_dict(self) -> dict:
        """The manifest's JSON as written, a copy: for the export's manifest.json."""
        return copy.deepcopy(self._raw)

    @property
    def positive_label(self) -> int:
        return positive_label(self.class_names)

    def split_paths(self, data: storage.Location, split: str) -> list[str]:
        """The filesystem paths of one split's shard files, under the shard set `data`."""
        return [data.join(shard.path).path for shard in self.shards[split]]

    def preprocess_config(self, **overrides) -> PreprocessConfig:
        """The image work's settings this shard set was made with (CLAHE, size, markings...),
        to preprocess other images alike; how its originals were fetched does not carry over."""
        settings = copy.deepcopy(self._raw["config"])
        settings.pop("download", None)
        nested = {"clahe": ClaheConfig, "markings": MarkingConfig, "lungs": LungFocusConfig, "split": SplitConfig,
                  "synthetic": SyntheticConfig}
        for name, config_class in nested.items():
            # Manifests older than a part (lungs) were made without it: as it was off, whatever
            # its defaults are now.
            settings[name] = config_class(**settings.get(name, _BEFORE_RECORDED.get(name, {})))
        # Which images carry a source was decided by the listing; scoring other images does
        # not read the training data's metadata file, nor group by one of its columns.
        settings.pop("metadata", None)
        # Nor does it choose a cohort: the model scores whoever it is given (its card says whom it
        # was trained on).
        settings.pop("cohort", None)
        settings["split"] = dataclasses.replace(settings["split"], group_by=None)
        if settings.get("classes") is not None:
            settings["classes"] = tuple(settings["classes"])
        return PreprocessConfig(**{**settings, **overrides})

    def config_record(self) -> dict:
        """The preprocessing config as recorded (JSON), for a report that quotes it."""
        return copy.deepcopy(self._raw["config"])

    def has_column(self, name: str) -> bool:
        """True when the shards have this column (shards of older versions lack `source`)."""
        return name in self._raw.get("columns", {})

    def input_counts(self) -> dict[str, dict]:
        """Per --source NAME=...: its URI and found, kept and rejected (source.inputs); {} for one unnamed source."""
        return copy.deepcopy(self._raw["source"].get("inputs", {}))

    def metadata_record(self) -> dict:
        """Where the sources came from (source.metadata: sheets, csv), as recorded; {} if none."""
        return copy.deepcopy(self._raw["source"].get("metadata", {}))

    def counts_record(self) -> dict:
        """The counts section as recorded (JSON), for a report that quotes it."""
        return copy.deepcopy(self._raw["counts"])


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


def _summed_over_splits(sources: Mapping[str, Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """{source: {class: images}} over all splits, from the per-split source counts."""
    table: dict[str, dict[str, int]] = {}
    for per_source in sources.values():
        for name, per_class in per_source.items():
            summed = table.setdefault(name, {})
            for class_name, n in per_class.items():
                if class_name != "total":
                    summed[class_name] = summed.get(class_name, 0) + n
    return table


def _split_counts(per_class: Mapping[str, int]) -> SplitCounts:
    return SplitCounts(per_class=_frozen({k: v for k, v in per_class.items() if k != "total"}), total=per_class["total"])


def _kaggle_source(record: dict | None) -> KaggleSource | None:
    if not record:
        return None
    return KaggleSource(dataset=record["dataset"], version=record["version"],
                        fetched=_frozen({name: _frozen(how) for name, how in record["fetched"].items()}))


def read_manifest(uri: str, remedy: str = PREPROCESS_AGAIN) -> Manifest:
    """The manifest of a finished preprocessing output (or of an export), checked; `remedy`
    says in a one-line error what to do about a damaged one."""
    layout = ShardsLayout.at(uri)
    if not storage.is_file(layout.manifest):
        raise UserError(f"{layout.root.uri}: no {MANIFEST_FILE} (not a finished output of jobs/preprocess.py)")
    try:
        raw = storage.read_json(layout.manifest)
    except ValueError:  # UnicodeDecodeError too
        raise UserError(f"{layout.manifest.uri}: not valid JSON, the file is damaged; {remedy}") from None
    return Manifest.from_dict(raw, where=layout.manifest.uri, remedy=remedy)


def check_shard_files(data: storage.Location, manifest: Manifest, split: str) -> None:
    """Refuse, in one line naming the file, a shard of `split` that cannot be read or holds
    other rows than the manifest lists, before Ray Data's tasks meet it with a traceback.

    Reads each file's Parquet footer only (a few KB): a cut file has lost it.
    """
    for shard in manifest.shards[split]:
        location = data.join(shard.path)
        if not storage.is_file(location):
            raise UserError(f"{location.uri}: missing, the shard set is incomplete; {PREPROCESS_AGAIN}")
        try:
            with location.fs.open_input_file(location.path) as handle:
                rows = pq.ParquetFile(handle).metadata.num_rows
        except ValueError as exc:  # pyarrow's ArrowInvalid: no footer, or not Parquet at all
            raise UserError(f"{location.uri}: not a readable Parquet file ({one_line(exc)}); {PREPROCESS_AGAIN}") \
                from None
        except OSError as exc:
            raise storage.storage_error(exc, location.uri) from None
        if rows != shard.rows:
            raise UserError(f"{location.uri}: holds {rows} rows where {MANIFEST_FILE} lists {shard.rows}; "
                            f"{PREPROCESS_AGAIN}")


# ---------------------------------------------------------------- a training run and its export

EXPORT_DIR = "model"
MODEL_FILE = "model.keras"  # in the export and in every checkpoint
STATE_FILE = "state.json"  # in every checkpoint: the epoch, early stopping, the history
# In every checkpoint (since issue 28; older ones lack it): the sha256 of each of its other
# files, written by rank 0 and checked before the checkpoint is read (cxr.train.checkpoints).
CHECKPOINT_DIGEST_FILE = "digest.json"
# Ray Train's checkpoint folders in a run are named checkpoint_<date and time>.
RAY_CHECKPOINT_PREFIX = "checkpoint_"
TRAINING_FILE = "training.json"
HISTORY_FILE = "history.csv"
LEARNING_CURVE_FILE = "learning_curve.png"
WORKERS_DIR = "workers"
REPORT_DIR = "report"
RUN_SETTINGS_FILE = "run.json"  # what defines the run, written before its first epoch (cxr.train.settings)
# TensorBoard's event files (cxr.train.tracking): a run's in its own folder, a sweep's one
# folder per trial, so that `tensorboard --logdir` on the folder compares the trials.
TENSORBOARD_DIR = "tensorboard"
# Ray Train's record of a run's checkpoints: once it exists, rerunning the run resumes it.
RAY_CHECKPOINTS_FILE = "checkpoint_manager_snapshot.json"


@dataclass(frozen=True)
class ExportLayout(_Layout):
    """`<run>/model/`: the best model and what scoring needs to use it."""

    model = _File(MODEL_FILE)
    manifest = _File(MANIFEST_FILE)
    training = _File(TRAINING_FILE)
    history = _File(HISTORY_FILE)
    learning_curve = _File(LEARNING_CURVE_FILE)

    @property
    def run(self) -> RunLayout:
        """The run this export belongs to: its parent folder."""
        return RunLayout.at(self.root.uri.rstrip("/").rsplit("/", 1)[0])


@dataclass(frozen=True)
class RunLayout(_Layout):
    """`<storage>/<name>/`: a training run (Ray Train writes its checkpoints here too)."""

    settings = _File(RUN_SETTINGS_FILE)
    ray_checkpoints = _File(RAY_CHECKPOINTS_FILE)
    tensorboard = _File(TENSORBOARD_DIR)
    claim = _File(CLAIM_FILE)

    @property
    def export(self) -> ExportLayout:
        return ExportLayout(self.root.join(EXPORT_DIR))

    @property
    def report(self) -> ReportLayout:
        return ReportLayout(self.root.join(REPORT_DIR))

    def checkpoint(self, name: str) -> storage.Location:
        """One of Ray Train's checkpoint folders, by its name."""
        return self.root.join(name)

    def worker_record(self, rank: int) -> storage.Location:
        """workers/rank-N.json: each worker's final weights digest, to check they ended in sync."""
        return self.root.join(WORKERS_DIR, f"rank-{rank}.json")


# ---------------------------------------------------------------- a hyperparameter sweep

SWEEP_SETTINGS_FILE = "sweep.json"  # what defines the sweep, written before its first trial (cxr.tune.settings)
TRIALS_CSV_FILE = "trials.csv"
TRIALS_MARKDOWN_FILE = "trials.md"
TRIALS_FIGURE_FILE = "trials_val_auc.png"
TUNE_EXPERIMENT_DIR = "tune"  # Ray Tune's own state: once it exists, rerunning the sweep resumes it
TRIALS_DIR = "trials"  # one training run per trial, named by its Ray Tune trial id
BEST_DIR = "best"


@dataclass(frozen=True)
class SweepLayout(_Layout):
    """`<storage>/<name>/` of jobs/tune.py: every trial an ordinary run under `trials/`, and
    `best/` a run holding the export of the trial chosen on the validation split."""

    settings = _File(SWEEP_SETTINGS_FILE)
    trials_csv = _File(TRIALS_CSV_FILE)
    trials_markdown = _File(TRIALS_MARKDOWN_FILE)
    trials_figure = _File(TRIALS_FIGURE_FILE)
    experiment = _File(TUNE_EXPERIMENT_DIR)
    trials = _File(TRIALS_DIR)
    tensorboard = _File(TENSORBOARD_DIR)
    claim = _File(CLAIM_FILE)

    def trial(self, trial_id: str) -> RunLayout:
        return RunLayout(self.root.join(TRIALS_DIR, trial_id))

    def trial_tensorboard(self, trial_id: str) -> storage.Location:
        """`tensorboard/<trial id>/`: a trial's event files, beside the other trials' rather than
        in its run (TensorBoard names each run by its folder)."""
        return self.root.join(TENSORBOARD_DIR, trial_id)

    @property
    def best(self) -> RunLayout:
        return RunLayout(self.root.join(BEST_DIR))


# ---------------------------------------------------------------- an evaluation report

REPORT_FILE = "report.json"  # the numbers; the two Markdown files are written from them
REPORT_MARKDOWN_FILE = "report.md"
MODEL_CARD_FILE = "MODEL_CARD.md"
FIGURES_DIR = "figures"
ROC_FIGURE = "roc.png"
CONFUSION_FIGURE = "confusion_matrix.png"
RELIABILITY_FIGURE = "reliability.png"
GRADCAM_FIGURE = "gradcam.png"
# and a copy of the export's LEARNING_CURVE_FILE


@dataclass(frozen=True)
class ReportLayout(_Layout):
    """The evaluation's folder: report.json, report.md, MODEL_CARD.md and figures/."""

    report = _File(REPORT_FILE)
    markdown = _File(REPORT_MARKDOWN_FILE)
    model_card = _File(MODEL_CARD_FILE)

    def figure(self, name: str) -> storage.Location:
        return self.root.join(figure_path(name))


def figure_path(name: str) -> str:
    """A figure's path relative to the report folder, as report.json and report.md cite it."""
    return f"{FIGURES_DIR}/{name}"


# Every file a report may hold, by its path under the report folder: what a new report
# replaces of an older one.
REPORT_PATHS = (REPORT_FILE, REPORT_MARKDOWN_FILE, MODEL_CARD_FILE,
                *(figure_path(name) for name in (ROC_FIGURE, CONFUSION_FIGURE, RELIABILITY_FIGURE,
                                                 LEARNING_CURVE_FILE, GRADCAM_FIGURE)))


# ---------------------------------------------------------------- batch predictions

PREDICTIONS_FILE = "predictions.parquet"  # one row per file found
PREDICTIONS_CSV_FILE = "predictions.csv"  # the same rows
PREDICTIONS_SUMMARY_FILE = "summary.json"
PREDICTIONS_FILES = (PREDICTIONS_FILE, PREDICTIONS_CSV_FILE, PREDICTIONS_SUMMARY_FILE)


@dataclass(frozen=True)
class PredictionsLayout(_Layout):
    """`jobs/predict.py --output`: the predictions as Parquet and as CSV, and a summary."""

    parquet = _File(PREDICTIONS_FILE)
    csv = _File(PREDICTIONS_CSV_FILE)
    summary = _File(PREDICTIONS_SUMMARY_FILE)
    claim = _File(CLAIM_FILE)
