"""The training job's config: TrainConfig and its augmentation (AugmentConfig), the model names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cxr.config.checks import check, check_seed, check_wait_timeout, require, wait_timeout_setting
from cxr.errors import UserError
from cxr.options import Shorthand, from_mapping, setting

MODEL_NAMES = ("scratch_cnn", "vgg19_head")  # built by cxr.train.models
LR_SCHEDULES = ("cosine", "constant")


def check_model_name(name: str) -> None:
    """--model: one of MODEL_NAMES (TrainConfig checks it; so do the model builders, called without one)."""
    require(name in MODEL_NAMES, f"--model must be one of {', '.join(MODEL_NAMES)}, got {name!r}")


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
    """Augmentation: on the fly, of training images (cxr.train.data.augmentation).

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

    rotation: float = setting(0.03, flag="--augment-rotation", help="largest rotation, as a fraction of a turn")
    shift: float = setting(0.08, flag="--augment-shift", help="largest shift, as a fraction of the side")
    zoom: float = setting(0.1, flag="--augment-zoom", help="largest zoom in or out, as a fraction of the side")
    gamma: float = setting(0.0, flag="--augment-gamma", help="largest |log gamma|")
    contrast: float = setting(0.0, flag="--augment-contrast", help="largest relative change of contrast")
    brightness: float = setting(0.0, flag="--augment-brightness", help="largest shift of brightness")
    blur: float = setting(0.0, flag="--augment-blur", help="largest Gaussian blur sigma, in pixels of the input")
    noise: float = setting(0.0, flag="--augment-noise", help="largest standard deviation of added noise")
    resolution: float = setting(0.0, flag="--augment-resolution",
                                help="largest share of the side lost in a down- and up-scaling round trip")

    def __post_init__(self) -> None:
        for name, limit in _AUGMENT_LIMITS.items():
            check(self, name, 0 <= getattr(self, name) < limit, f"must be in [0, {limit})")

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
        return dataclasses.replace(self, **appearance_settings(strength))


def appearance_settings(strength: float) -> dict[str, float]:
    """The appearance preset times `strength` (--appearance-augment), as AugmentConfig's settings."""
    require(strength >= 0, f"--appearance-augment must not be negative, got {strength:g}")
    settings = {name: round(value * strength, 6) for name, value in APPEARANCE_PRESET.items()}
    try:
        AugmentConfig(**settings)
    except UserError as too_strong:  # says which strength is out of range, not which flag set it
        raise UserError(f"--appearance-augment {strength:g} is too strong: {too_strong}") from None
    return settings


def no_geometric_augmentation(_) -> dict[str, float]:
    """--no-augment: no rotation, shift or zoom (appearance: --appearance-augment 0)."""
    return {"rotation": 0.0, "shift": 0.0, "zoom": 0.0}


# The training job's appearance strength: with the lung crop it raised the held-out-source AUC
# most, for some in-database AUC (docs/benchmarks.md, "generalization").
DEFAULT_APPEARANCE_STRENGTH = 1.0


def default_augmentation() -> AugmentConfig:
    """The training job's augmentation: the geometric defaults and the appearance preset."""
    return AugmentConfig().with_appearance(DEFAULT_APPEARANCE_STRENGTH)


def parse_node_labels(texts: list[str]) -> tuple[tuple[str, str], ...]:
    """`--node-label KEY=VALUE` options as (key, value) pairs (TrainConfig checks them)."""
    return tuple((key.strip(), value.strip()) for key, _, value in (text.partition("=") for text in texts))


def _run_name_ok(name: str) -> bool:
    return name.replace("-", "").replace("_", "").replace(".", "").isalnum()


@dataclass(frozen=True)
class TrainConfig:
    data: str = setting("outputs/shards/synthetic", flag="--data", defines_run=False,
                        help="output of the preprocess job, local or s3:// (which shards: their manifest, "
                             "recorded, defines the run)")
    model: str = setting("scratch_cnn", flag="--model", choices=MODEL_NAMES, help="the architecture")
    # "none", "imagenet" (vgg19_head only) or a weights file; None: imagenet for
    # vgg19_head (the paper's frozen base), none for scratch_cnn.
    weights: str | None = setting(None, flag="--weights", help="none, imagenet (vgg19_head) or a weights file "
                                                               "(default: imagenet for vgg19_head, none for scratch_cnn)")
    storage: str = setting("outputs/runs", flag="--storage", defines_run=False,
                           help="where runs live, local or s3://")
    name: str | None = setting(None, flag="--name", defines_run=False,
                               help="the run's name: it lives in <storage>/<name>/ (default: the model's name; a "
                                    "sweep's: <model>-sweep)")
    epochs: int = setting(5, flag="--epochs", help="upper bound: early stopping may end sooner")
    # Validation loss swings from epoch to epoch while the learning rate is high (quality
    # section of docs/benchmarks.md): a short patience stops runs that are still improving.
    patience: int = setting(10, flag="--patience",
                            help="epochs without a better validation loss before stopping")
    batch_size: int = setting(32, flag="--batch-size", help="global batch size, split across the workers")
    learning_rate: float = setting(3e-4, flag="--learning-rate", help="Adam's (peak) learning rate")
    # "cosine": from learning_rate down to 0 over --epochs (a planned end, so the last
    # epochs fine-tune instead of bouncing); "constant": the paper's fixed rate.
    lr_schedule: str = setting("cosine", flag="--lr-schedule", choices=LR_SCHEDULES,
                               help="cosine decay to 0 over --epochs, or constant")
    dropout: float = setting(0.2, flag="--dropout", help="dropout around the dense head; 0 for none, as in the paper")
    class_weights: bool = setting(True, flag="--class-weights", help="weight classes by their frequency")
    # Each source-and-class cell of the training split weighs the same in the loss, so that a
    # source rich in one class cannot teach the model its look (cxr.train.data).
    balance_sources: bool = setting(False, flag="--balance-sources",
                                    help="weight each training image so that every source-and-class cell "
                                         "contributes evenly (with class weights: each class evenly, and within "
                                         "it each source)")
    augment: AugmentConfig = setting(factory=default_augmentation, flag=None, shorthands=(
        Shorthand("--no-augment", "no on-the-fly geometric augmentation (appearance: --appearance-augment 0)",
                  no_geometric_augmentation),
        Shorthand("--appearance-augment", "appearance augmentation (gamma, contrast, brightness, blur, noise, "
                  "resolution loss) as hospitals differ: 1 is the preset, 0 none (default: "
                  f"{DEFAULT_APPEARANCE_STRENGTH:g})", appearance_settings, float, "STRENGTH"),
    ))
    workers: int = setting(1, flag="--workers", defines_run=False, help="Ray Train workers")
    gpu: bool = setting(False, flag="--gpu", defines_run=False, help="one GPU per worker")
    # None: 1, or less on a small machine so that Ray Data keeps a CPU to feed the workers.
    cpus_per_worker: float | None = setting(None, flag="--cpus-per-worker", defines_run=False,
                                            help="CPUs each worker reserves (default: 1, or less on a small "
                                                 "machine so that Ray Data keeps one to feed them)")
    max_failures: int = setting(2, flag="--max-failures", defines_run=False,
                                help="worker failures survived by resuming from the latest checkpoint")
    # Memory per worker for keeping its decoded train and validation images after the
    # first epoch (uint8: 89 KB an image at 299 px); above it, every epoch streams anew.
    cache_mib: int = setting(2048, flag="--cache-mib", defines_run=False,
                             help="memory per worker to keep decoded images after the first epoch; 0 streams "
                                  "every epoch")
    seed: int = setting(0, flag="--seed", help="the root of every random stream of the run (cxr.seeds)")
    # Resilience drill: one worker raises once, mid-epoch, in this epoch (>= 1).
    fail_at_epoch: int | None = setting(None, flag="--fail-at-epoch", defines_run=False,
                                        help="resilience drill: one worker raises once in this epoch")
    # Ray node labels every worker's node must carry, as (key, value) pairs: on a cluster
    # with GPU and CPU pools, ("cxr-pool", "gpu") keeps training on the GPU nodes.
    node_labels: tuple[tuple[str, str], ...] = setting(
        (), flag="--node-label", repeat=True, parse=parse_node_labels, metavar="KEY=VALUE", defines_run=False,
        help="run the workers only on nodes with this Ray node label (repeatable); on the cluster configs in "
             "this repository: cxr-pool=gpu")
    # Seconds to wait for an autoscaling cluster to hold the workers (cxr.resources).
    wait_timeout: float = wait_timeout_setting("workers")
    # An MLflow tracking URI (cxr.train.tracking) the run's params and per-epoch metrics also go to.
    mlflow: str | None = setting(None, flag="--mlflow", metavar="URI", defines_run=False,
                                 help="also log the run's settings and per-epoch metrics to this MLflow tracking "
                                      "URI (a folder, file:// or http(s)://); TensorBoard events are always "
                                      "written")

    def __post_init__(self) -> None:
        check_model_name(self.model)
        check(self, "epochs", self.epochs >= 1, "must be at least 1")
        check(self, "patience", self.patience >= 1, "must be at least 1")
        check(self, "workers", self.workers >= 1, "must be at least 1")
        check(self, "batch_size", self.batch_size >= 1, "must be positive")
        # Each worker's replica takes batch_size / workers images of every batch.
        require(self.batch_size >= self.workers, f"--batch-size {self.batch_size} is smaller than --workers")
        check(self, "learning_rate", self.learning_rate > 0, "must be positive")
        check(self, "lr_schedule", self.lr_schedule in LR_SCHEDULES, f"must be one of {', '.join(LR_SCHEDULES)}")
        check(self, "dropout", 0 <= self.dropout < 1, "must be in [0, 1)")
        check(self, "cpus_per_worker", self.cpus_per_worker is None or self.cpus_per_worker > 0, "must be positive")
        check(self, "cache_mib", self.cache_mib >= 0, "must not be negative")
        check(self, "max_failures", self.max_failures >= 0, "must not be negative")
        require(self.fail_at_epoch is None or 1 <= self.fail_at_epoch < self.epochs,
                 "--fail-at-epoch must be at least 1 (after a first checkpoint) and below --epochs")
        require(_run_name_ok(self.run_name), f"--name may hold letters, digits, '-', '_' and '.', got {self.run_name!r}")
        for key, value in self.node_labels:
            require(bool(key and value), f"--node-label must be KEY=VALUE, got {key}={value}")
        check(self, "mlflow", self.mlflow is None or bool(self.mlflow.strip()), "must not be empty")
        check_seed(self)
        check_wait_timeout(self)

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
        """The config `to_dict` recorded (run.json, training.json), as JSON gives it back; a
        setting it lacks (recorded before the setting existed) takes its default."""
        return from_mapping(cls, record, "recorded training config")
