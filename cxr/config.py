"""Configuration of every job, in one module: frozen dataclasses, validated on construction.

A config is plain data: a job's parser (cxr/cli/) builds one from its arguments (taking every
default from here), its stage reads it, and what it made records it (the manifest holds
the PreprocessConfig in full, `to_dict`; training.json the TrainConfig), so an artifact
always says how it was made. Preprocessing: PreprocessConfig and its parts (ClaheConfig,
MarkingConfig, SplitConfig, SyntheticConfig, DownloadConfig, with the Kaggle source's
constants and the --classes parser); training: TrainConfig (AugmentConfig, the model
names, --node-label's parser); tuning: TuneConfig (SearchParameter, the default search
space); EvaluateConfig; PredictConfig.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from cxr.errors import UserError

MARKING_POLICIES = ("drop", "keep", "inpaint")
# On the real sample, thresholds from 0.3 to 0.7 drop 1.7% to 1.2% of the originals and
# catch 96-98% of drawn markings either way: the detector's scores are nearly binary
# (cxr.preprocess.markings), and 0.5 sits in the middle of that flat range.
DEFAULT_MARKING_THRESHOLD = 0.5


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


# Seconds a job waits for an autoscaling cluster to start the nodes its workers or actors
# need (cxr.resources): a cold GPU node takes a few minutes to boot and pull the image, and
# ten minutes is as long as a person watching a job should wait to hear it cannot start.
# A Ray that cannot grow never waits.
DEFAULT_WAIT_TIMEOUT = 600.0
# --seed is the root of a NumPy SeedSequence (cxr.seeds), which refuses negatives.
MAX_SEED = 2**31 - 1


def add_wait_timeout_argument(parser, what: str) -> None:
    """--wait-timeout, for the jobs that start workers or actors (`what`: which)."""
    parser.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for an autoscaling cluster to start the nodes the {what} need; 0 "
                             "fails at once. A Ray that cannot grow (the job's own, or a cluster without an "
                             "autoscaler) never waits (default: %(default)g)")


def _check_wait_timeout(seconds: float) -> None:
    _require(seconds >= 0, f"--wait-timeout must be 0 seconds (fail at once) or more, got {seconds:g}")


def _check_seed(seed: int) -> None:
    _require(0 <= seed <= MAX_SEED, f"--seed must be in [0, {MAX_SEED}], got {seed}")


@dataclass(frozen=True)
class ClaheConfig:
    """Parameters of `skimage.exposure.equalize_adapthist`, the source paper's CLAHE."""

    # None lets scikit-image pick 1/8 of each image side, its documented default.
    kernel_size: int | None = None
    clip_limit: float = 0.01
    nbins: int = 256

    def __post_init__(self) -> None:
        _require(self.kernel_size is None or self.kernel_size >= 2,
                 f"--clahe-kernel-size must be at least 2, got {self.kernel_size}")
        _require(0 < self.clip_limit <= 1, f"--clahe-clip-limit must be in (0, 1], got {self.clip_limit}")
        _require(2 <= self.nbins <= 65536, f"--clahe-nbins must be in [2, 65536], got {self.nbins}")


@dataclass(frozen=True)
class MarkingConfig:
    """What to do with images that carry burned-in text, labels, arrows or rulers."""

    policy: str = "drop"
    threshold: float = DEFAULT_MARKING_THRESHOLD
    # Inpaint every mark the detector finds in a kept image, whatever its score, not only
    # those at or above the threshold (with "drop", heavily marked images are still dropped).
    # Off by default until measured (docs/benchmarks.md, "generalization").
    remove_all: bool = False

    def __post_init__(self) -> None:
        _require(self.policy in MARKING_POLICIES,
                 f"--markings must be one of {', '.join(MARKING_POLICIES)}, got {self.policy!r}")
        _require(0 <= self.threshold <= 1, f"--marking-threshold must be in [0, 1], got {self.threshold}")


@dataclass(frozen=True)
class LungFocusConfig:
    """Preprocessing that points the model at the lungs (cxr.preprocess.lungs).

    `crop`: cut each image to the box around its lung fields, found per image, plus
    `margin` (a fraction of that box's side on every side), before CLAHE and the resize.
    `suppress`: black out everything outside the lung fields (grown by the same margin).
    The crop is on by default: with appearance augmentation it is what moved the held-out
    source AUC (docs/benchmarks.md, "generalization"); suppression is not.
    """

    crop: bool = True
    suppress: bool = False
    margin: float = 0.05

    def __post_init__(self) -> None:
        _require(0 <= self.margin <= 0.5, f"--lung-margin must be in [0, 0.5], got {self.margin}")

    @property
    def enabled(self) -> bool:
        return self.crop or self.suppress


@dataclass(frozen=True)
class SplitConfig:
    """Train/val/test ratios; the split is stratified by class and keyed by pixel content.

    Near-duplicates (fingerprints at most `near_duplicate_distance` of 256 bits apart:
    cxr.preprocess.fingerprints) are kept inside one split; -1 turns the grouping off.
    """

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    # Leave-sources-out: every image of these sources goes to the test split, none to train
    # or val; the other images are split by the ratios above, so the test split also holds an
    # in-distribution share (none with a test ratio of 0).
    test_sources: tuple[str, ...] = ()
    # Off by default until measured on the real sample (benchmarks/near_duplicates.py). On 40
    # real X-rays, resized, re-windowed and re-compressed copies were at most 24 bits from
    # their original, distinct images at least 74 apart (3%-cropped copies 36 to 76); but the
    # synthetic source's images share one drawn anatomy and group across classes at any
    # useful distance (12 bits already joins a COVID and a Normal one).
    near_duplicate_distance: int = -1
    # A --metadata column (a patient id): images that share its value stay in one split, as
    # near-duplicates do, so that no patient is both trained on and tested on.
    group_by: str | None = None

    def __post_init__(self) -> None:
        ratios = (self.train, self.val, self.test)
        _require(all(r >= 0 for r in ratios), f"split ratios must not be negative, got {ratios}")
        _require(math.isclose(sum(ratios), 1.0, abs_tol=1e-6), f"split ratios must add up to 1, got {ratios}")
        _require(self.train > 0, "the train split ratio must be positive")
        object.__setattr__(self, "test_sources", tuple(self.test_sources))  # a JSON list, read back
        _require(all(name.strip() == name and name for name in self.test_sources),
                 f"--test-sources must be comma-separated source names, got {list(self.test_sources)}")
        _require(len(set(self.test_sources)) == len(self.test_sources),
                 f"--test-sources has duplicates: {list(self.test_sources)}")
        _require(-1 <= self.near_duplicate_distance < 256,
                 f"--near-duplicate-distance must be -1 (off) to 255 bits, got {self.near_duplicate_distance}")
        _require(self.group_by is None or (bool(self.group_by) and self.group_by.strip() == self.group_by),
                 f"--group-by must name a --metadata column, got {self.group_by!r}")

    @property
    def ratios(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


# The synthetic generator's distinct sites (cxr.ingest.synthetic.SITES has one style each).
MAX_SYNTHETIC_SOURCES = 6


@dataclass(frozen=True)
class SyntheticConfig:
    """The embedded default source: generated chest-X-ray-like images (see cxr.ingest.synthetic)."""

    images: int = 600
    seed: int = 0
    size: int = 320
    # About the real database's 1 : 2.8 COVID : Normal ratio, so class weighting is exercised.
    covid_fraction: float = 0.27
    marking_fraction: float = 0.15
    # Exact copies of other images, so that duplicate removal has work to do.
    duplicate_fraction: float = 0.02
    # 1: one source, "synthetic", every image drawn from one acquisition distribution (the
    # quickstart's data). 2 or more: sites that differ as hospitals do (cxr.ingest.synthetic,
    # SITES), equally many images each.
    sources: int = 1
    # How strongly the COVID rate differs between the training sites, from 0 (the same
    # everywhere) to 1 (as far apart as the overall rate allows: the first site has none).
    # The last site always keeps the overall rate: hold it out (--test-sources) to measure
    # what a model learned from the site instead of the lungs.
    confound: float = 0.0

    def __post_init__(self) -> None:
        _require(self.images >= 2, f"--synthetic-images must be at least 2, got {self.images}")
        _require(64 <= self.size <= 2048, f"--synthetic-size must be in [64, 2048], got {self.size}")
        for name in ("covid_fraction", "marking_fraction", "duplicate_fraction", "confound"):
            value = getattr(self, name)
            _require(0 <= value <= 1, f"synthetic {name} must be in [0, 1], got {value}")
        _require(1 <= self.sources <= MAX_SYNTHETIC_SOURCES,
                 f"--synthetic-sources must be in [1, {MAX_SYNTHETIC_SOURCES}], got {self.sources}")
        _require(self.confound == 0 or self.sources >= 3,
                 "--synthetic-confound needs --synthetic-sources 3 or more: two training sites to differ, "
                 "and the last one to hold out")
        _require(self.images >= 2 * self.sources, f"--synthetic-images {self.images} is too few for "
                                                  f"{self.sources} sources of two classes each")


KAGGLE_SOURCE = "kaggle"
# The source paper's data; `kaggle:<owner>/<dataset>` names another of the same layout.
KAGGLE_DEFAULT_DATASET = "tawsifurrahman/covid19-radiography-database"
# The paper's two classes, in this label order, unless --classes says otherwise.
KAGGLE_DEFAULT_CLASSES = ("COVID", "Normal")


def is_kaggle_source(source: str) -> bool:
    return source == KAGGLE_SOURCE or source.startswith(KAGGLE_SOURCE + ":")


def parse_node_labels(texts: list[str] | None) -> tuple[tuple[str, str], ...]:
    """`--node-label KEY=VALUE` options as (key, value) pairs (TrainConfig checks them)."""
    return tuple((key.strip(), value.strip()) for key, _, value in (text.partition("=") for text in texts or ()))


def parse_classes(text: str | None, source: str) -> tuple[str, ...] | None:
    """--classes: a comma-separated list in label order, or 'all' (every class folder, sorted).

    Unset, Kaggle sources take the paper's two classes and other sources every class folder.
    """
    if text is None:
        return KAGGLE_DEFAULT_CLASSES if is_kaggle_source(source) else None
    if text.strip().lower() == "all":
        return None
    return tuple(c.strip() for c in text.split(","))


@dataclass(frozen=True)
class DownloadConfig:
    """How a remote source's files are fetched: cache, concurrency, retries, failure budget."""

    # Originals are kept here (local folder or s3:// prefix), one folder per dataset version;
    # a rerun downloads only what is missing. None: nothing is kept.
    raw_cache: str | None = None
    # One download of the dataset's zip into raw_cache, whose members are then read in
    # parallel; otherwise every file is downloaded on its own, by the Ray workers.
    archive: bool = False
    concurrency: int = 8  # downloads in flight at once, over the whole cluster
    retries: int = 5  # per file, after the first attempt, for timeouts, 429 and 5xx
    backoff_seconds: float = 0.5  # before the first retry; doubled for each next one
    max_backoff_seconds: float = 60.0  # also caps a server's Retry-After
    timeout_seconds: float = 60.0  # connect and per-read
    # The job fails, with a summary, when more than this share of the downloads failed.
    max_failed_share: float = 0.01
    page_size: int = 200  # files per listing request

    def __post_init__(self) -> None:
        _require(self.raw_cache is None or bool(self.raw_cache), "--raw-cache must not be empty")
        _require(self.concurrency >= 1, f"--download-concurrency must be at least 1, got {self.concurrency}")
        _require(self.retries >= 0, f"--download-retries must not be negative, got {self.retries}")
        _require(self.backoff_seconds >= 0 and self.max_backoff_seconds >= self.backoff_seconds,
                 "download backoff must be non-negative and at most its maximum")
        _require(self.timeout_seconds > 0, f"--download-timeout must be positive, got {self.timeout_seconds}")
        _require(0 <= self.max_failed_share <= 1,
                 f"--max-failed-share must be in [0, 1], got {self.max_failed_share}")
        _require(1 <= self.page_size <= 1000, f"listing page size must be in [1, 1000], got {self.page_size}")
        _require(not self.archive or self.raw_cache is not None,
                 "--kaggle-archive needs --raw-cache: the zip is stored there for every worker to read")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1, 2, ...), before jitter."""
        return min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (retry - 1))


@dataclass(frozen=True)
class PreprocessConfig:
    source: str = "synthetic"
    output: str = "outputs/shards/synthetic"
    image_size: int = 299
    # None: every class folder found, in sorted order. Otherwise these, in this label order.
    classes: tuple[str, ...] | None = None
    clahe: ClaheConfig = field(default_factory=ClaheConfig)
    markings: MarkingConfig = field(default_factory=MarkingConfig)
    lungs: LungFocusConfig = field(default_factory=LungFocusConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    # A CSV (local or s3://) of per-image metadata: a path or file-name column, a source
    # column, any others kept as shard columns (cxr.ingest.metadata).
    metadata: str | None = None
    # Larger images are rejected from their header, before any pixel is decoded.
    max_pixels: int = 50_000_000
    # Images are downscaled to this longest side before marking detection and CLAHE: both
    # cost grows with pixels, and 1024 keeps over 3x the output resolution.
    working_max_side: int = 1024
    rows_per_shard: int = 1000
    overwrite: bool = False

    def __post_init__(self) -> None:
        _require(bool(self.source), "--source must not be empty")
        _require(bool(self.output), "--output must not be empty")
        _require(32 <= self.image_size <= 2048, f"--image-size must be in [32, 2048], got {self.image_size}")
        _require(self.working_max_side >= self.image_size,
                 f"working size {self.working_max_side} must be at least --image-size {self.image_size}")
        _require(self.max_pixels >= self.image_size ** 2, "--max-pixels is smaller than one output image")
        _require(self.rows_per_shard >= 1, f"--rows-per-shard must be positive, got {self.rows_per_shard}")
        if self.classes is not None:
            _require(len(self.classes) >= 2, f"--classes needs at least two classes, got {list(self.classes)}")
            _require(len(set(self.classes)) == len(self.classes), f"--classes has duplicates: {list(self.classes)}")
            _require(all(c and "/" not in c for c in self.classes), f"bad class names in --classes: {list(self.classes)}")
        _require(is_kaggle_source(self.source) or (self.download.raw_cache is None and not self.download.archive),
                 "--raw-cache and --kaggle-archive apply to --source kaggle only")
        _require(self.metadata is None or (bool(self.metadata) and self.source != "synthetic"),
                 "--metadata applies to folder, zip, S3 and Kaggle sources (synthetic images carry their own)")
        _require(self.split.group_by is None or self.metadata is not None,
                 "--group-by names a column of --metadata, which is not given")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MODEL_NAMES = ("scratch_cnn", "vgg19_head")  # built by cxr.train.models
LR_SCHEDULES = ("cosine", "constant")


def check_model_name(name: str) -> None:
    """--model: one of MODEL_NAMES (TrainConfig checks it; so do the model builders, called without one)."""
    _require(name in MODEL_NAMES, f"--model must be one of {', '.join(MODEL_NAMES)}, got {name!r}")


# Appearance augmentation at strength 1 (--appearance-augment 1): the ranges a replica of
# the scratch CNN trained with when it moved the held-out-source AUC most (issue 17): gamma
# from e^-0.3 to e^0.3, contrast and brightness by up to 30% and 10%, Gaussian blur of up
# to 1 px of the model's input, noise up to 3% of full scale, and a round trip through
# down to 60% of the resolution.
APPEARANCE_PRESET = {"gamma": 0.3, "contrast": 0.3, "brightness": 0.1, "blur": 1.0, "noise": 0.03,
                     "resolution": 0.4}
# Largest strength of each (geometric ones and gamma/contrast/brightness: below 0.5 or 1; the
# tune space doubles the defaults, so every limit holds twice the preset).
_AUGMENT_LIMITS = {"rotation": 0.5, "shift": 0.5, "zoom": 0.5, "gamma": 1.0, "contrast": 1.0, "brightness": 0.5,
                   "blur": 4.0, "noise": 0.2, "resolution": 0.9}


@dataclass(frozen=True)
class AugmentConfig:
    """On-the-fly augmentation of training images (cxr.train.data.augmentation).

    Geometric, as the paper's Keras image generator: rotation is a fraction of a full turn
    (0.03 is about 11 degrees); shift and zoom are fractions of the image side.
    Appearance, as hospitals differ (cxr.train.appearance), each drawn per image (blur and
    resolution per batch): gamma is the largest |log gamma|; contrast and brightness the
    largest relative change and shift; blur the largest Gaussian sigma in pixels of the
    model's input; noise the largest standard deviation of added Gaussian noise (full scale 1);
    resolution the largest fraction of the side lost in a down- and up-scaling round trip.
    AugmentConfig() is the geometric part alone; the training job's default adds the
    appearance preset (default_augmentation). All zero turns augmentation off.
    """

    rotation: float = 0.03
    shift: float = 0.08
    zoom: float = 0.1
    gamma: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    resolution: float = 0.0

    def __post_init__(self) -> None:
        for name, limit in _AUGMENT_LIMITS.items():
            value = getattr(self, name)
            _require(0 <= value < limit, f"augmentation {name} must be in [0, {limit}), got {value}")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) for name in _AUGMENT_LIMITS)

    @property
    def appearance(self) -> bool:
        return any(getattr(self, name) for name in APPEARANCE_PRESET)

    def scaled(self, strength: float) -> AugmentConfig:
        """Every strength times `strength` (the result is checked as any config)."""
        return AugmentConfig(**{name: round(getattr(self, name) * strength, 6) for name in _AUGMENT_LIMITS})

    def with_appearance(self, strength: float) -> AugmentConfig:
        """These geometric strengths, and the appearance preset times `strength` (0: none)."""
        return dataclasses.replace(self, **{name: round(value * strength, 6)
                                            for name, value in APPEARANCE_PRESET.items()})


# The training job's appearance strength: with the lung crop it raised the held-out-source AUC
# most, for some in-database AUC (docs/benchmarks.md, "generalization").
DEFAULT_APPEARANCE_STRENGTH = 1.0


def default_augmentation() -> AugmentConfig:
    """The training job's augmentation: the geometric defaults and the appearance preset."""
    return AugmentConfig().with_appearance(DEFAULT_APPEARANCE_STRENGTH)


@dataclass(frozen=True)
class TrainConfig:
    data: str = "outputs/shards/synthetic"
    model: str = "scratch_cnn"
    # "none", "imagenet" (vgg19_head only) or a weights file; None: imagenet for
    # vgg19_head (the paper's frozen base), none for scratch_cnn.
    weights: str | None = None
    storage: str = "outputs/runs"
    name: str | None = None  # None: the model's name
    epochs: int = 5  # an upper bound: early stopping may end sooner
    # Validation loss swings from epoch to epoch while the learning rate is high (quality
    # section of docs/benchmarks.md): a short patience stops runs that are still improving.
    patience: int = 10
    batch_size: int = 32  # global: split across the workers
    learning_rate: float = 3e-4  # the peak: see lr_schedule
    # "cosine": from learning_rate down to 0 over --epochs (a planned end, so the last
    # epochs fine-tune instead of bouncing); "constant": the paper's fixed rate.
    lr_schedule: str = "cosine"
    dropout: float = 0.2  # around the dense head (cxr.train.models); 0 for none, as in the paper
    class_weights: bool = True
    augment: AugmentConfig = field(default_factory=default_augmentation)
    workers: int = 1
    gpu: bool = False
    # None: 1, or less on a small machine so that Ray Data keeps a CPU to feed the workers.
    cpus_per_worker: float | None = None
    max_failures: int = 2
    # Memory per worker for keeping its decoded train and validation images after the
    # first epoch (uint8: 89 KB an image at 299 px); above it, every epoch streams anew.
    cache_mib: int = 2048
    seed: int = 0
    # Resilience drill: one worker raises once, mid-epoch, in this epoch (>= 1).
    fail_at_epoch: int | None = None
    # Ray node labels every worker's node must carry, as (key, value) pairs: on a cluster
    # with GPU and CPU pools, ("cxr-pool", "gpu") keeps training on the GPU nodes.
    node_labels: tuple[tuple[str, str], ...] = ()
    # Seconds to wait for an autoscaling cluster to hold the workers (cxr.resources).
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT

    def __post_init__(self) -> None:
        check_model_name(self.model)
        _require(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        _require(self.patience >= 1, f"--patience must be at least 1, got {self.patience}")
        _require(self.workers >= 1, f"--workers must be at least 1, got {self.workers}")
        _require(self.batch_size >= 1, f"--batch-size must be positive, got {self.batch_size}")
        # Each worker's replica takes batch_size / workers images of every batch.
        _require(self.batch_size >= self.workers, f"--batch-size {self.batch_size} is smaller than --workers")
        _require(self.learning_rate > 0, f"--learning-rate must be positive, got {self.learning_rate}")
        _require(self.lr_schedule in LR_SCHEDULES,
                 f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        _require(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        _require(self.cpus_per_worker is None or self.cpus_per_worker > 0,
                 f"--cpus-per-worker must be positive, got {self.cpus_per_worker}")
        _require(self.cache_mib >= 0, f"--cache-mib must not be negative, got {self.cache_mib}")
        _require(self.max_failures >= 0, f"--max-failures must not be negative, got {self.max_failures}")
        _require(self.fail_at_epoch is None or 1 <= self.fail_at_epoch < self.epochs,
                 "--fail-at-epoch must be at least 1 (after a first checkpoint) and below --epochs")
        _require(self.run_name.replace("-", "").replace("_", "").replace(".", "").isalnum(),
                 f"--name may hold letters, digits, '-', '_' and '.', got {self.run_name!r}")
        for key, value in self.node_labels:
            _require(bool(key and value), f"--node-label must be KEY=VALUE, got {key}={value}")
        _check_seed(self.seed)
        _check_wait_timeout(self.wait_timeout)

    @property
    def run_name(self) -> str:
        return self.name or self.model

    @property
    def weights_spec(self) -> str:
        if self.weights is not None:
            return self.weights
        return "imagenet" if self.model == "vgg19_head" else "none"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> TrainConfig:
        """The config `to_dict` recorded (run.json, training.json), as JSON gives it back."""
        return cls(**{**record, "augment": AugmentConfig(**record["augment"]),
                      "node_labels": tuple(tuple(pair) for pair in record["node_labels"])})


# What a search space may tune: TrainConfig's settings that change what is trained (and
# that a trial can take without a new model builder), and the kinds of draw each allows.
# `augment` is a strength: 1 is the training job's default augmentation (AugmentConfig()),
# 0 none, 2 twice its rotations, shifts and zooms.
SEARCH_KINDS = {
    "learning_rate": ("loguniform", "uniform", "choice", "fixed"),
    "dropout": ("uniform", "choice", "fixed"),
    "augment": ("uniform", "choice", "fixed"),
    "batch_size": ("choice", "fixed"),
    "class_weights": ("choice", "fixed"),
    "lr_schedule": ("choice", "fixed"),
}
# The Python type each tuned value must have (bool is not a number here: `dropout: true`
# is a mistake, not 1.0).
_VALUE_TYPES = {"learning_rate": float, "dropout": float, "augment": float, "batch_size": int,
                "class_weights": bool, "lr_schedule": str}
TUNE_METRICS = {"val_loss": "min", "val_auc": "max"}  # the metric and which way is better
SEARCHERS = ("auto", "random", "optuna")


def _is_value_of(name: str, value) -> bool:
    wanted = _VALUE_TYPES[name]
    if wanted is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if wanted is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, wanted)


@dataclass(frozen=True)
class SearchParameter:
    """One tuned setting and what a trial draws it from.

    kind "loguniform" or "uniform": values are (low, high); "choice": the options, drawn
    with equal chance; "fixed": the one value every trial takes.
    """

    name: str
    kind: str
    values: tuple

    def __post_init__(self) -> None:
        _require(self.name in SEARCH_KINDS,
                 f"unknown parameter {self.name!r} (tunable: {', '.join(SEARCH_KINDS)})")
        kinds = SEARCH_KINDS[self.name]
        _require(self.kind in kinds, f"{self.name}: {self.kind!r} is not one of {', '.join(kinds)}")
        for value in self.values:
            _require(_is_value_of(self.name, value),
                     f"{self.name}: {value!r} is not a {_VALUE_TYPES[self.name].__name__}")
        if self.kind in ("loguniform", "uniform"):
            _require(len(self.values) == 2, f"{self.name}: {self.kind} takes [low, high], got {list(self.values)}")
            low, high = self.values
            _require(low < high, f"{self.name}: {self.kind} needs low < high, got [{low}, {high}]")
            _require(self.kind == "uniform" or low > 0, f"{self.name}: loguniform needs low > 0, got {low}")
        elif self.kind == "choice":
            _require(len(self.values) >= 1, f"{self.name}: choice needs at least one option")
            _require(len(set(self.values)) == len(self.values),
                     f"{self.name}: choice has duplicates: {list(self.values)}")
        else:
            _require(len(self.values) == 1, f"{self.name}: a fixed value is one value, got {list(self.values)}")

    def extremes(self) -> tuple:
        """The values that prove a trial can take every draw: the bounds, or every option."""
        return self.values


# The default search space: the settings that moved test AUC by 0.02 to 0.07 when tuned by
# hand (docs/benchmarks.md, "quality"), around the training job's defaults. Learning rates
# from the paper's 1e-3, which learns erratically here, down to 1e-5; batch sizes a laptop
# and a GPU both hold at 299 px.
DEFAULT_SPACE = (
    SearchParameter("learning_rate", "loguniform", (1e-5, 1e-3)),
    SearchParameter("dropout", "uniform", (0.0, 0.5)),
    SearchParameter("batch_size", "choice", (16, 32, 64)),
    SearchParameter("augment", "uniform", (0.0, 2.0)),
    SearchParameter("class_weights", "choice", (True, False)),
)


def scaled_augmentation(strength: float, base: AugmentConfig | None = None) -> AugmentConfig:
    """`base` (default: the training job's default augmentation) times `strength`
    (AugmentConfig checks the result)."""
    return (base or default_augmentation()).scaled(strength)


@dataclass(frozen=True)
class TuneConfig:
    """A hyperparameter search: `trials` training runs, each the training job with `train`'s
    settings and the values it drew from `space` in place of theirs.

    `train.name` names the sweep (`<storage>/<name>/`). Checked on construction: every value
    the space can draw must make a valid TrainConfig, so a space the model cannot take is
    refused before any trial starts.
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    trials: int = 16
    space: tuple[SearchParameter, ...] = DEFAULT_SPACE
    space_source: str = "the default search space"  # or "--space FILE": where errors point
    # Trials at once; None: as many as the cluster's GPUs (--gpu) or CPUs hold.
    max_concurrent: int | None = None
    metric: str = "val_loss"
    # Epochs every trial trains before the scheduler may stop it: early epochs under a
    # warm, high learning rate say little about where a run ends.
    grace_period: int = 3
    # ASHA keeps the best 1/reduction_factor of the trials at each of its rungs.
    reduction_factor: int = 3
    searcher: str = "auto"

    def __post_init__(self) -> None:
        _require(self.trials >= 1, f"--trials must be at least 1, got {self.trials}")
        _require(self.max_concurrent is None or self.max_concurrent >= 1,
                 f"--max-concurrent must be at least 1, got {self.max_concurrent}")
        _require(self.metric in TUNE_METRICS, f"--metric must be one of {', '.join(TUNE_METRICS)}, got {self.metric!r}")
        _require(self.grace_period >= 1, f"--grace-period must be at least 1, got {self.grace_period}")
        _require(self.reduction_factor >= 2, f"--reduction-factor must be at least 2, got {self.reduction_factor}")
        _require(self.searcher in SEARCHERS, f"--searcher must be one of {', '.join(SEARCHERS)}, got {self.searcher!r}")
        _require(bool(self.space), f"{self.space_source}: the search space is empty")
        names = [parameter.name for parameter in self.space]
        _require(len(set(names)) == len(names), f"{self.space_source}: a parameter appears twice in {names}")
        for parameter in self.space:
            for value in parameter.extremes():
                try:
                    self.trial_config({parameter.name: value})
                except UserError as refused:
                    raise UserError(f"{self.space_source}: {parameter.name} {value!r} cannot be trained: "
                                    f"{refused}") from None

    @property
    def sweep_name(self) -> str:
        return self.train.name or f"{self.train.model}-sweep"

    @property
    def mode(self) -> str:
        return TUNE_METRICS[self.metric]

    def trial_config(self, drawn: dict, **changes) -> TrainConfig:
        """The TrainConfig of a trial that drew `drawn` (name -> value); `changes` set other
        fields (the trial's storage and name)."""
        values = {name: _as_setting(name, value) for name, value in drawn.items()}
        if "augment" in values:
            # The sweep's own augmentation scaled: appearance asked for stays in every trial.
            values["augment"] = scaled_augmentation(values["augment"], self.train.augment)
        return dataclasses.replace(self.train, **values, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _as_setting(name: str, value):
    """A drawn value as TrainConfig takes it (Ray Tune may hand over numpy scalars)."""
    _require(name in SEARCH_KINDS, f"unknown parameter {name!r} (tunable: {', '.join(SEARCH_KINDS)})")
    return _VALUE_TYPES[name](value)


@dataclass(frozen=True)
class PredictConfig:
    model: str  # an export folder: <storage>/<name>/model
    input: str  # a folder, an s3:// prefix or a .zip of raw images, at any depth
    output: str  # a folder or s3:// prefix for predictions.parquet, predictions.csv, summary.json
    # The positive class's probability at or above which it is predicted (2 classes);
    # None: the most probable class.
    threshold: float | None = None
    gpu: bool = False
    actors: int | None = None  # None: one per GPU, or half the CPUs (at most 4)
    overwrite: bool = False
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT  # for an autoscaling cluster to hold the actors

    def __post_init__(self) -> None:
        _require(self.threshold is None or 0 < self.threshold < 1, f"--threshold must be in (0, 1), got {self.threshold}")
        _require(self.actors is None or self.actors >= 1, f"--actors must be at least 1, got {self.actors}")
        _check_wait_timeout(self.wait_timeout)


@dataclass(frozen=True)
class EvaluateConfig:
    run: str  # <storage>/<name> of a training run, or its model/ folder
    data: str | None = None  # None: the training data's shards; or other shards; or a raw image tree
    split: str = "test"
    output: str | None = None  # None: <run>/report
    resamples: int = 1000
    gradcam_examples: int = 4  # per group: true positives, false positives, false negatives
    gpu: bool = False
    actors: int | None = None
    seed: int = 0
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT  # for an autoscaling cluster to hold the actors

    def __post_init__(self) -> None:
        _require(self.split in ("train", "val", "test"), f"--split must be train, val or test, got {self.split!r}")
        _require(self.resamples >= 100, f"--resamples must be at least 100, got {self.resamples}")
        _require(self.gradcam_examples >= 0, f"--gradcam-examples must not be negative, got {self.gradcam_examples}")
        _require(self.actors is None or self.actors >= 1, f"--actors must be at least 1, got {self.actors}")
        _check_seed(self.seed)
        _check_wait_timeout(self.wait_timeout)
