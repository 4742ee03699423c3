"""`cxr preprocess` and jobs/preprocess.py: the preprocessing job's options, its config, its run."""

from __future__ import annotations

import argparse

from cxr.config import (KAGGLE_DEFAULT_CLASSES, KAGGLE_DEFAULT_DATASET, MARKING_POLICIES, MAX_SYNTHETIC_SOURCES,
                        ClaheConfig, DownloadConfig, LungFocusConfig, MarkingConfig, PreprocessConfig, SplitConfig,
                        SyntheticConfig, parse_classes)
from cxr.errors import UserError
from cxr.runtime import setup_logging

DESCRIPTION = "Decode, filter, CLAHE-normalise and shard chest X-rays with Ray Data."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PreprocessConfig()
    parser.add_argument("--source", default=defaults.source,
                        help="class-per-folder tree (local folder or s3:// prefix), a .zip of one, "
                             f"'kaggle' ({KAGGLE_DEFAULT_DATASET}), kaggle:<owner>/<dataset>[/versions/<n>], "
                             "or 'synthetic' (default: %(default)s)")
    parser.add_argument("--output", default=defaults.output,
                        help="local folder or s3:// prefix for the shards (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class folders to use, in label order, or 'all' (default: "
                             f"{','.join(KAGGLE_DEFAULT_CLASSES)} for Kaggle, all (sorted) otherwise)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size,
                        help="output side in pixels (default: %(default)s)")
    parser.add_argument("--markings", choices=MARKING_POLICIES, default=defaults.markings.policy,
                        help="what to do with images carrying burned-in markings (default: %(default)s)")
    parser.add_argument("--marking-threshold", type=float, default=defaults.markings.threshold,
                        help="marking score at or above which the policy applies (default: %(default)s)")
    parser.add_argument("--remove-all-markings", action="store_true",
                        help="inpaint every burned-in mark the detector finds in a kept image, not only those "
                             "at or above --marking-threshold; recorded, so scoring does the same")
    parser.add_argument("--lung-crop", action=argparse.BooleanOptionalAction, default=defaults.lungs.crop,
                        help="crop each image to the box around its lung fields, found per image; recorded, "
                             "so evaluate and predict do the same (default: on)")
    parser.add_argument("--lung-suppress", action="store_true",
                        help="black out everything outside the lung fields (with --lung-crop or alone)")
    parser.add_argument("--lung-margin", type=float, default=defaults.lungs.margin,
                        help="how far the lung fields are grown before cropping or blacking out, as a fraction "
                             "of their box (default: %(default)s)")
    parser.add_argument("--clahe-clip-limit", type=float, default=defaults.clahe.clip_limit)
    parser.add_argument("--clahe-kernel-size", type=int, default=defaults.clahe.kernel_size,
                        help="CLAHE tile size in pixels (default: 1/8 of the image)")
    parser.add_argument("--clahe-nbins", type=int, default=defaults.clahe.nbins)
    parser.add_argument("--split", default=",".join(f"{r:g}" for r in defaults.split.ratios.values()),
                        help="train,val,test ratios (default: %(default)s)")
    parser.add_argument("--split-seed", type=int, default=defaults.split.seed)
    parser.add_argument("--test-sources", default=None, metavar="A,B",
                        help="leave these sources out: all their images go to the test split and none to "
                             "train or val (names as in the manifest's per-source counts)")
    parser.add_argument("--metadata", default=defaults.metadata, metavar="CSV",
                        help="per-image metadata (local or s3://): a path (relative to --source) or file_name "
                             "column, a source column, and other columns to keep in the shards")
    parser.add_argument("--near-duplicate-distance", type=int, default=defaults.split.near_duplicate_distance,
                        help="images whose 256-bit fingerprints differ in at most this many bits are "
                             "near-duplicates, kept in one split; -1: off (default: %(default)s)")
    parser.add_argument("--group-by", default=defaults.split.group_by, metavar="COLUMN",
                        help="a --metadata column such as a patient id: images that share its value are kept in "
                             "one split (its values are never printed)")
    parser.add_argument("--rows-per-shard", type=int, default=defaults.rows_per_shard)
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                        help="larger images are rejected unread (default: %(default)s)")
    parser.add_argument("--synthetic-images", type=int, default=defaults.synthetic.images)
    parser.add_argument("--synthetic-seed", type=int, default=defaults.synthetic.seed)
    parser.add_argument("--synthetic-size", type=int, default=defaults.synthetic.size,
                        help="side of the generated originals in pixels, before --image-size (default: %(default)s)")
    parser.add_argument("--synthetic-covid-fraction", type=float, default=defaults.synthetic.covid_fraction,
                        help="share of COVID images over all sites (default: %(default)s)")
    parser.add_argument("--synthetic-sources", type=int, default=defaults.synthetic.sources,
                        help="sites the images come from, each with its own acquisition look, up to "
                             f"{MAX_SYNTHETIC_SOURCES} (default: %(default)s: one broad source)")
    parser.add_argument("--synthetic-confound", type=float, default=defaults.synthetic.confound,
                        help="0 to 1: how far the COVID rate differs between the sites, except the last, which "
                             "keeps the overall rate (hold it out with --test-sources) (default: %(default)s)")
    kaggle = parser.add_argument_group("Kaggle sources")
    kaggle.add_argument("--raw-cache", default=defaults.download.raw_cache,
                        help="local folder or s3:// prefix that keeps the downloaded originals; "
                             "a rerun downloads only what is missing (default: none kept)")
    kaggle.add_argument("--kaggle-archive", action="store_true",
                        help="download the dataset's zip once into --raw-cache, then read its members "
                             "in parallel (default: every file on its own, by the workers)")
    kaggle.add_argument("--download-concurrency", type=int, default=defaults.download.concurrency,
                        help="downloads in flight at once, over the whole cluster (default: %(default)s)")
    kaggle.add_argument("--download-retries", type=int, default=defaults.download.retries,
                        help="retries per file for timeouts, HTTP 429 and 5xx (default: %(default)s)")
    kaggle.add_argument("--download-timeout", type=float, default=defaults.download.timeout_seconds,
                        help="seconds to wait for a connection or a read (default: %(default)s)")
    kaggle.add_argument("--max-failed-share", type=float, default=defaults.download.max_failed_share,
                        help="fail the job when more than this share of images could not be "
                             "downloaded (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(parser)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> PreprocessConfig:
    try:
        ratios = [float(x) for x in args.split.split(",")]
    except ValueError:
        raise UserError(f"--split must be three comma-separated numbers, got {args.split!r}") from None
    if len(ratios) != 3:
        raise UserError(f"--split must be three comma-separated numbers, got {args.split!r}")
    classes = parse_classes(args.classes, args.source)
    test_sources = tuple(name.strip() for name in args.test_sources.split(",")) if args.test_sources else ()
    return PreprocessConfig(
        source=args.source, output=args.output, overwrite=args.overwrite, classes=classes,
        image_size=args.image_size, max_pixels=args.max_pixels, rows_per_shard=args.rows_per_shard,
        markings=MarkingConfig(policy=args.markings, threshold=args.marking_threshold,
                               remove_all=args.remove_all_markings),
        lungs=LungFocusConfig(crop=args.lung_crop, suppress=args.lung_suppress, margin=args.lung_margin),
        clahe=ClaheConfig(kernel_size=args.clahe_kernel_size, clip_limit=args.clahe_clip_limit,
                          nbins=args.clahe_nbins),
        split=SplitConfig(*ratios, seed=args.split_seed, test_sources=test_sources,
                          near_duplicate_distance=args.near_duplicate_distance, group_by=args.group_by),
        metadata=args.metadata,
        synthetic=SyntheticConfig(images=args.synthetic_images, seed=args.synthetic_seed, size=args.synthetic_size,
                                  covid_fraction=args.synthetic_covid_fraction, sources=args.synthetic_sources,
                                  confound=args.synthetic_confound),
        download=DownloadConfig(raw_cache=args.raw_cache, archive=args.kaggle_archive,
                                concurrency=args.download_concurrency, retries=args.download_retries,
                                timeout_seconds=args.download_timeout, max_failed_share=args.max_failed_share))


def main(argv: list[str] | None = None) -> int:
    """`python jobs/preprocess.py ARGS`."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """The job, from its parsed arguments (`cxr preprocess`, main)."""
    setup_logging(args.verbose)  # before Ray and TensorFlow are imported
    # The stage loads Ray, pyarrow and scikit-image: --help and bad arguments answer before that.
    from cxr.artifacts import Manifest
    from cxr.preprocess.manifest import format_summary
    from cxr.preprocess.pipeline import run_preprocess
    config = build_config(args)
    manifest = run_preprocess(config)
    print(format_summary(Manifest.from_dict(manifest), config.output))
    return 0
