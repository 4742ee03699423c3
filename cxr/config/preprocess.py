"""The preprocessing job's config: PreprocessConfig and its parts (ClaheConfig, MarkingConfig,
LungFocusConfig, SplitConfig, SyntheticConfig, DownloadConfig), the Kaggle source's constants."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from cxr.config.checks import check, comma_list, require
from cxr.options import Shorthand, setting

MARKING_POLICIES = ("drop", "keep", "inpaint")
# On the real sample, thresholds from 0.3 to 0.7 drop 1.7% to 1.2% of the originals and
# catch 96-98% of drawn markings either way: the detector's scores are nearly binary
# (cxr.preprocess.markings), and 0.5 sits in the middle of that flat range.
DEFAULT_MARKING_THRESHOLD = 0.5



@dataclass(frozen=True)
class ClaheConfig:
    """CLAHE: the parameters of `skimage.exposure.equalize_adapthist`, the source paper's."""

    # None lets scikit-image pick 1/8 of each image side, its documented default.
    kernel_size: int | None = setting(None, flag="--clahe-kernel-size",
                                      help="CLAHE tile size in pixels (default: 1/8 of the image)")
    clip_limit: float = setting(0.01, flag="--clahe-clip-limit", help="CLAHE's contrast limit")
    nbins: int = setting(256, flag="--clahe-nbins", help="CLAHE's histogram bins")

    def __post_init__(self) -> None:
        check(self, "kernel_size", self.kernel_size is None or self.kernel_size >= 2, "must be at least 2")
        check(self, "clip_limit", 0 < self.clip_limit <= 1, "must be in (0, 1]")
        check(self, "nbins", 2 <= self.nbins <= 65536, "must be in [2, 65536]")


@dataclass(frozen=True)
class MarkingConfig:
    """Markings: what to do with images that carry burned-in text, labels, arrows or rulers."""

    policy: str = setting("drop", flag="--markings", choices=MARKING_POLICIES,
                          help="what to do with images carrying burned-in markings")
    threshold: float = setting(DEFAULT_MARKING_THRESHOLD, flag="--marking-threshold",
                               help="marking score at or above which the policy applies")
    # Inpaint every mark the detector finds in a kept image, whatever its score, not only
    # those at or above the threshold (with "drop", heavily marked images are still dropped).
    # Off by default until measured (docs/benchmarks.md, "generalization").
    remove_all: bool = setting(False, flag="--remove-all-markings",
                               help="inpaint every burned-in mark the detector finds in a kept image, not only "
                                    "those at or above --marking-threshold; recorded, so scoring does the same")

    def __post_init__(self) -> None:
        check(self, "policy", self.policy in MARKING_POLICIES, f"must be one of {', '.join(MARKING_POLICIES)}")
        check(self, "threshold", 0 <= self.threshold <= 1, "must be in [0, 1]")


@dataclass(frozen=True)
class LungFocusConfig:
    """Lung focus: preprocessing that points the model at the lungs (cxr.preprocess.lungs).

    `crop`: cut each image to the box around its lung fields, found per image, plus
    `margin` (a fraction of that box's side on every side), before CLAHE and the resize.
    `suppress`: black out everything outside the lung fields (grown by the same margin).
    The crop is on by default: with appearance augmentation it is what moved the held-out
    source AUC (docs/benchmarks.md, "generalization"); suppression is not.
    """

    crop: bool = setting(True, flag="--lung-crop",
                         help="crop each image to the box around its lung fields, found per image; recorded, "
                              "so evaluate and predict do the same")
    suppress: bool = setting(False, flag="--lung-suppress",
                             help="black out everything outside the lung fields (with --lung-crop or alone)")
    margin: float = setting(0.05, flag="--lung-margin",
                            help="how far the lung fields are grown before cropping or blacking out, as a "
                                 "fraction of their box")

    def __post_init__(self) -> None:
        check(self, "margin", 0 <= self.margin <= 0.5, "must be in [0, 0.5]")

    @property
    def enabled(self) -> bool:
        return self.crop or self.suppress


def split_ratios(text: str) -> dict[str, float]:
    """--split's three comma-separated ratios, as SplitConfig's settings."""
    try:
        ratios = [float(x) for x in text.split(",")]
    except ValueError:
        ratios = []
    require(len(ratios) == 3, f"--split must be three comma-separated numbers, got {text!r}")
    return dict(zip(("train", "val", "test"), ratios))


@dataclass(frozen=True)
class SplitConfig:
    """Split: train/val/test ratios, stratified by class and keyed by pixel content.

    Near-duplicates (fingerprints at most `near_duplicate_distance` of 256 bits apart:
    cxr.preprocess.fingerprints) are kept inside one split; -1 turns the grouping off.
    """

    # Set together by --split (PreprocessConfig.split).
    train: float = setting(0.8, flag=None, help="share of the images in the training split")
    val: float = setting(0.1, flag=None, help="share in the validation split")
    test: float = setting(0.1, flag=None, help="share in the test split")
    seed: int = setting(0, flag="--split-seed", help="seed of the split's shuffle")
    # Leave-sources-out: every image of these sources goes to the test split, none to train
    # or val; the other images are split by the ratios above, so the test split also holds an
    # in-distribution share (none with a test ratio of 0).
    test_sources: tuple[str, ...] = setting(
        (), flag="--test-sources", metavar="A,B", parse=comma_list,
        help="leave these sources out: all their images go to the test split and none to train or val (names "
             "as in the manifest's per-source counts)")
    # Model choice on hospitals the model did not train on: every image of these sources goes
    # to the validation split, so early stopping, the best epoch and a sweep's objective
    # measure reading the disease on an unseen source, not the source.
    val_sources: tuple[str, ...] = setting(
        (), flag="--val-sources", metavar="A,B", parse=comma_list,
        help="choose the model on these sources: all their images go to the validation split and none to "
             "train or test")
    # Off by default until measured on the real sample (benchmarks/near_duplicates.py). On 40
    # real X-rays, resized, re-windowed and re-compressed copies were at most 24 bits from
    # their original, distinct images at least 74 apart (3%-cropped copies 36 to 76); but the
    # synthetic source's images share one drawn anatomy and group across classes at any
    # useful distance (12 bits already joins a COVID and a Normal one).
    near_duplicate_distance: int = setting(
        -1, flag="--near-duplicate-distance",
        help="images whose 256-bit fingerprints differ in at most this many bits are near-duplicates, kept in "
             "one split; -1: off")
    # A --metadata column (a patient id): images that share its value stay in one split, as
    # near-duplicates do, so that no patient is both trained on and tested on.
    group_by: str | None = setting(None, flag="--group-by", metavar="COLUMN",
                                   help="a --metadata column such as a patient id: images that share its value "
                                        "are kept in one split (its values are never printed)")

    def __post_init__(self) -> None:
        ratios = (self.train, self.val, self.test)
        require(all(r >= 0 for r in ratios), f"split ratios must not be negative, got {ratios}")
        require(math.isclose(sum(ratios), 1.0, abs_tol=1e-6), f"split ratios must add up to 1, got {ratios}")
        require(self.train > 0, "the train split ratio must be positive")
        object.__setattr__(self, "test_sources", tuple(self.test_sources))  # a JSON list, read back
        check(self, "test_sources", all(name.strip() == name and name for name in self.test_sources),
               "must be comma-separated source names")
        check(self, "test_sources", len(set(self.test_sources)) == len(self.test_sources), "has duplicates")
        object.__setattr__(self, "val_sources", tuple(self.val_sources))
        check(self, "val_sources", all(name.strip() == name and name for name in self.val_sources),
              "must be comma-separated source names")
        check(self, "val_sources", len(set(self.val_sources)) == len(self.val_sources), "has duplicates")
        both = sorted(set(self.val_sources) & set(self.test_sources))
        require(not both, f"--val-sources and --test-sources both name {', '.join(both)}")
        check(self, "near_duplicate_distance", -1 <= self.near_duplicate_distance < 256,
               "must be -1 (off) to 255 bits")
        check(self, "group_by", self.group_by is None or (bool(self.group_by) and self.group_by.strip() == self.group_by),
               "must name a --metadata column")

    @property
    def ratios(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


# The synthetic generator's distinct sites: one per style in cxr.ingest.synthetic.SITES
# (tests/test_architecture.py pins the two together; the config does not import the generator).
MAX_SYNTHETIC_SOURCES = 6


@dataclass(frozen=True)
class SyntheticConfig:
    """Synthetic data: the embedded default source, chest-X-ray-like images (cxr.ingest.synthetic)."""

    images: int = setting(600, flag="--synthetic-images", help="images to generate")
    seed: int = setting(0, flag="--synthetic-seed", help="seed of the generator")
    size: int = setting(320, flag="--synthetic-size", help="side of the generated originals in pixels, before "
                                                            "--image-size")
    # About the real database's 1 : 2.8 COVID : Normal ratio, so class weighting is exercised.
    covid_fraction: float = setting(0.27, flag="--synthetic-covid-fraction", help="share of COVID images over all sites")
    marking_fraction: float = setting(0.15, flag=None, help="share of images with burned-in markings")
    # Exact copies of other images, so that duplicate removal has work to do.
    duplicate_fraction: float = setting(0.02, flag=None, help="share of exact copies of other images")
    # 1: one source, "synthetic", every image drawn from one acquisition distribution (the
    # quickstart's data). 2 or more: sites that differ as hospitals do (cxr.ingest.synthetic,
    # SITES), equally many images each.
    sources: int = setting(1, flag="--synthetic-sources",
                           help=f"sites the images come from, each with its own acquisition look, up to "
                                f"{MAX_SYNTHETIC_SOURCES} (1: one broad source)")
    # How strongly the COVID rate differs between the training sites, from 0 (the same
    # everywhere) to 1 (as far apart as the overall rate allows: the first site has none).
    # The last site always keeps the overall rate: hold it out (--test-sources) to measure
    # what a model learned from the site instead of the lungs.
    confound: float = setting(0.0, flag="--synthetic-confound",
                              help="0 to 1: how far the COVID rate differs between the sites, except the last, "
                                   "which keeps the overall rate (hold it out with --test-sources)")

    def __post_init__(self) -> None:
        check(self, "images", self.images >= 2, "must be at least 2")
        check(self, "size", 64 <= self.size <= 2048, "must be in [64, 2048]")
        for name in ("covid_fraction", "marking_fraction", "duplicate_fraction", "confound"):
            check(self, name, 0 <= getattr(self, name) <= 1, "must be in [0, 1]")
        check(self, "sources", 1 <= self.sources <= MAX_SYNTHETIC_SOURCES, f"must be in [1, {MAX_SYNTHETIC_SOURCES}]")
        require(self.confound == 0 or self.sources >= 3,
                 "--synthetic-confound needs --synthetic-sources 3 or more: two training sites to differ, "
                 "and the last one to hold out")
        require(self.images >= 2 * self.sources, f"--synthetic-images {self.images} is too few for "
                                                  f"{self.sources} sources of two classes each")


KAGGLE_SOURCE = "kaggle"
# The source paper's data; `kaggle:<owner>/<dataset>` names another of the same layout.
KAGGLE_DEFAULT_DATASET = "tawsifurrahman/covid19-radiography-database"
# The paper's two classes, in this label order, unless --classes says otherwise.
KAGGLE_DEFAULT_CLASSES = ("COVID", "Normal")


def is_kaggle_source(source: str) -> bool:
    return source == KAGGLE_SOURCE or source.startswith(KAGGLE_SOURCE + ":")

SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def source_spec(spec: str) -> tuple[str | None, str]:
    """`--source NAME=SOURCE` as (name, source); a bare SOURCE has no name. A name is a word
    before the first `=` (letters, digits, `_`, `.`, `-`: no `/` or `:`), so `s3://b/k=v` stays
    a path; a local folder named like `a=b` is written `./a=b`."""
    name, equals, uri = spec.partition("=")
    if equals and uri and SOURCE_NAME.fullmatch(name):
        return name, uri
    return None, spec


def class_list(text: str) -> tuple[str, ...]:
    """--classes: a comma-separated list in label order, or 'all' (every class folder: ())."""
    return () if text.strip().lower() == "all" else tuple(c.strip() for c in text.split(","))


UNKNOWN_POLICIES = ("keep", "reject")


@dataclass(frozen=True)
class CohortConfig:
    """Cohort: which patients' images to keep, by the age and view their metadata gives.

    An image a filter removes is a recorded reject (`age_out_of_range`, `view_not_selected`,
    `age_unknown`, `view_unknown`), counted in the manifest. Views are the DICOM ViewPosition
    spellings (PA, AP, LL, ...), upper case.
    """

    min_age: float | None = setting(None, flag="--min-age", metavar="YEARS",
                                    help="keep only images of patients at least this old")
    max_age: float | None = setting(None, flag="--max-age", metavar="YEARS",
                                    help="keep only images of patients at most this old")
    views: tuple[str, ...] = setting((), flag="--views", metavar="PA,AP", parse=comma_list,
                                     help="keep only these views (default: every view)")
    unknown_age: str = setting("keep", flag="--unknown-age", choices=UNKNOWN_POLICIES,
                               help="with --min-age or --max-age: what to do with an image whose age is unknown")
    unknown_view: str = setting("keep", flag="--unknown-view", choices=UNKNOWN_POLICIES,
                                help="with --views: what to do with an image whose view is unknown")

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(view.strip().upper() for view in self.views))
        for name in ("min_age", "max_age"):
            value = getattr(self, name)
            check(self, name, value is None or 0 <= value <= 130, "must be in [0, 130] years")
        if self.min_age is not None and self.max_age is not None:
            require(self.min_age <= self.max_age, f"--min-age {self.min_age:g} is above --max-age {self.max_age:g}")
        check(self, "views", all(self.views), "must be comma-separated views such as PA,AP")
        check(self, "unknown_age", self.unknown_age in UNKNOWN_POLICIES, f"must be one of {', '.join(UNKNOWN_POLICIES)}")
        check(self, "unknown_view", self.unknown_view in UNKNOWN_POLICIES,
              f"must be one of {', '.join(UNKNOWN_POLICIES)}")

    @property
    def enabled(self) -> bool:
        return self.min_age is not None or self.max_age is not None or bool(self.views)


def label_pairs(texts: list[str]) -> tuple[tuple[str, str], ...]:
    """`--label-map FINDING=CLASS` options as (finding, class) pairs (PreprocessConfig checks them)."""
    return tuple((finding.strip(), name.strip()) for finding, _, name in (text.rpartition("=") for text in texts))


@dataclass(frozen=True)
class DownloadConfig:
    """Kaggle sources: how a remote source's files are fetched (cache, concurrency, retries, failures)."""

    # Originals are kept here (local folder or s3:// prefix), one folder per dataset version;
    # a rerun downloads only what is missing. None: nothing is kept.
    raw_cache: str | None = setting(None, flag="--raw-cache", defines_run=False,
                                    help="local folder or s3:// prefix that keeps the downloaded originals; a "
                                         "rerun downloads only what is missing (default: none kept)")
    # One download of the dataset's zip into raw_cache, whose members are then read in
    # parallel; otherwise every file is downloaded on its own, by the Ray workers.
    archive: bool = setting(False, flag="--kaggle-archive", defines_run=False,
                            help="download the dataset's zip once into --raw-cache, then read its members in "
                                 "parallel (default: every file on its own, by the workers)")
    concurrency: int = setting(8, flag="--download-concurrency", defines_run=False,
                               help="downloads in flight at once, over the whole cluster")
    retries: int = setting(5, flag="--download-retries", defines_run=False,
                           help="retries per file for timeouts, HTTP 429 and 5xx")
    backoff_seconds: float = setting(0.5, flag=None, defines_run=False,
                                     help="seconds before the first retry; doubled for each next one")
    max_backoff_seconds: float = setting(60.0, flag=None, defines_run=False,
                                         help="the longest wait between retries; also caps a server's Retry-After")
    timeout_seconds: float = setting(60.0, flag="--download-timeout", defines_run=False,
                                     help="seconds to wait for a connection or a read")
    max_failed_share: float = setting(0.01, flag="--max-failed-share", defines_run=False,
                                      help="fail the job when more than this share of images could not be "
                                           "downloaded")
    page_size: int = setting(200, flag=None, defines_run=False, help="files per listing request")

    def __post_init__(self) -> None:
        check(self, "raw_cache", self.raw_cache is None or bool(self.raw_cache), "must not be empty")
        check(self, "concurrency", self.concurrency >= 1, "must be at least 1")
        check(self, "retries", self.retries >= 0, "must not be negative")
        require(self.backoff_seconds >= 0 and self.max_backoff_seconds >= self.backoff_seconds,
                 "download backoff must be non-negative and at most its maximum")
        check(self, "timeout_seconds", self.timeout_seconds > 0, "must be positive")
        check(self, "max_failed_share", 0 <= self.max_failed_share <= 1, "must be in [0, 1]")
        check(self, "page_size", 1 <= self.page_size <= 1000, "must be in [1, 1000]")
        require(not self.archive or self.raw_cache is not None,
                 "--kaggle-archive needs --raw-cache: the zip is stored there for every worker to read")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1, 2, ...), before jitter."""
        return min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (retry - 1))


@dataclass(frozen=True)
class PreprocessConfig:
    # One or more source specs: PATH, or NAME=PATH to name the source its images come from
    # (its `source` column, unless its metadata names a finer one). A bare PATH's images take
    # their sources from their metadata, as before named sources existed.
    source: tuple[str, ...] | str = setting(
        ("synthetic",), flag="--source", repeat=True, parse=tuple, metavar="[NAME=]SOURCE",
        help="class-per-folder tree (local folder or s3:// prefix), a .zip of one, a public collection's "
             f"folder, 'kaggle' ({KAGGLE_DEFAULT_DATASET}), kaggle:<owner>/<dataset>[/versions/<n>], or "
             "'synthetic'; repeat as NAME=SOURCE to combine several sources, each image's source named "
             "(default: synthetic)")
    output: str = setting("outputs/shards/synthetic", flag="--output", defines_run=False,
                          help="local folder or s3:// prefix for the shards")
    image_size: int = setting(299, flag="--image-size", help="output side in pixels")
    # None: the source's own (Kaggle: the paper's two; others: every class folder, sorted);
    # (): every class folder; otherwise these, in this label order (wanted_classes).
    classes: tuple[str, ...] | None = setting(
        None, flag="--classes", parse=class_list,
        help=f"comma-separated class folders to use, in label order, or 'all' (default: "
             f"{','.join(KAGGLE_DEFAULT_CLASSES)} for Kaggle, all (sorted) otherwise)")
    clahe: ClaheConfig = setting(factory=ClaheConfig, flag=None)
    markings: MarkingConfig = setting(factory=MarkingConfig, flag=None)
    lungs: LungFocusConfig = setting(factory=LungFocusConfig, flag=None)
    split: SplitConfig = setting(factory=SplitConfig, flag=None, shorthands=(
        Shorthand("--split", "train,val,test ratios (default: 0.8,0.1,0.1)", split_ratios, str, "T,V,T"),))
    synthetic: SyntheticConfig = setting(factory=SyntheticConfig, flag=None)
    download: DownloadConfig = setting(factory=DownloadConfig, flag=None)
    cohort: CohortConfig = setting(factory=CohortConfig, flag=None)
    # A collection's findings (its metadata's words: "COVID-19", "No Finding") to the job's
    # classes; an image whose finding is not mapped is a recorded reject (`unmapped_finding`).
    label_map: tuple[tuple[str, str], ...] = setting(
        (), flag="--label-map", repeat=True, parse=label_pairs, metavar="FINDING=CLASS",
        help="map a collection's finding to a class (repeatable): --label-map COVID-19=COVID --label-map "
             "'No Finding=Normal' (default: each collection's own mapping, cxr/ingest/collections.py)")
    # A CSV (local or s3://) of per-image metadata: a path or file-name column, a source
    # column, any others kept as shard columns (cxr.ingest.metadata).
    metadata: str | None = setting(None, flag="--metadata", metavar="CSV",
                                   help="per-image metadata (local or s3://): a path (relative to --source) or "
                                        "file_name column, a source column, and other columns to keep in the "
                                        "shards")
    # Larger images are rejected from their header, before any pixel is decoded.
    max_pixels: int = setting(50_000_000, flag="--max-pixels", help="larger images are rejected unread")
    # Images are downscaled to this longest side before marking detection and CLAHE: both
    # cost grows with pixels, and 1024 keeps over 3x the output resolution.
    working_max_side: int = setting(1024, flag=None, help="longest side images are downscaled to before marking "
                                                          "detection and CLAHE")
    rows_per_shard: int = setting(1000, flag="--rows-per-shard", defines_run=False, help="rows in each shard file")
    overwrite: bool = setting(False, flag="--overwrite", defines_run=False, help="replace an existing output")

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", (self.source,) if isinstance(self.source, str) else tuple(self.source))
        check(self, "source", bool(self.source) and all(self.source), "must not be empty")
        named = self.named_sources
        require(len(named) == 1 or all(name for name, _ in named),
                "several sources must each be named: --source NAME=SOURCE, one flag for each")
        names = [name for name, _ in named if name]
        require(len(set(names)) == len(names), f"--source names a source twice: {names}")
        uris = [uri for _, uri in named]
        require(len(set(uris)) == len(uris), f"--source reads the same source twice: {uris}")
        require(sum(is_kaggle_source(uri) for uri in uris) <= 1, "--source: at most one Kaggle dataset a job")
        require(self.metadata is None or len(named) == 1,
                "--metadata applies to a single --source (its paths are relative to that source)")
        check(self, "output", bool(self.output), "must not be empty")
        check(self, "image_size", 32 <= self.image_size <= 2048, "must be in [32, 2048]")
        require(self.working_max_side >= self.image_size,
                 f"working size {self.working_max_side} must be at least --image-size {self.image_size}")
        require(self.max_pixels >= self.image_size ** 2, "--max-pixels is smaller than one output image")
        check(self, "rows_per_shard", self.rows_per_shard >= 1, "must be positive")
        if self.classes:
            classes = list(self.classes)
            require(len(self.classes) >= 2, f"--classes needs at least two classes, got {classes}")
            require(len(set(self.classes)) == len(self.classes), f"--classes has duplicates: {classes}")
            require(all(c and "/" not in c for c in self.classes), f"bad class names in --classes: {classes}")
        require(self.kaggle_uri is not None or (self.download.raw_cache is None and not self.download.archive),
                 "--raw-cache and --kaggle-archive apply to --source kaggle only")
        require(self.metadata is None or (bool(self.metadata) and self.source != ("synthetic",)),
                 "--metadata applies to folder, zip, S3 and Kaggle sources (synthetic images carry their own)")
        object.__setattr__(self, "label_map", tuple(tuple(pair) for pair in self.label_map))  # JSON's lists
        for finding, name in self.label_map:
            require(bool(finding and name), f"--label-map must be FINDING=CLASS, got {finding}={name}")
        findings = [finding for finding, _ in self.label_map]
        require(len(set(findings)) == len(findings), f"--label-map maps a finding twice: {findings}")

    @property
    def named_sources(self) -> tuple[tuple[str | None, str], ...]:
        """(name, source) of each --source: the name None for a bare one."""
        return tuple(source_spec(spec) for spec in self.source)

    @property
    def kaggle_uri(self) -> str | None:
        """The Kaggle source among them, if any."""
        return next((uri for _, uri in self.named_sources if is_kaggle_source(uri)), None)

    @property
    def wanted_classes(self) -> tuple[str, ...] | None:
        """The classes to keep, in label order; None: every class folder found, sorted."""
        if self.classes is None:
            return KAGGLE_DEFAULT_CLASSES if self.kaggle_uri is not None else None
        return self.classes or None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
