"""Generalization: what makes the model read the lungs, on sources it never saw?

    python benchmarks/generalization.py [--study sources|levers] [--image-size 64] [--images 600]
                                        [--epochs 10] [--seeds 0,1,2] [--no-write] [--smoke]
        sources: [--variants NAME,...] [--no-image-levers]
        levers:  [--levers NAME,...] [--real-images 3800] [--real-seeds 0,1,2] [--data-source DIR]
                 [--skip-synthetic] [--skip-real]

Two studies, each setting trained with `run_training` and scored with `run_evaluation` as
users do. A run measures one study; the section keeps the other's last results (from
docs/benchmarks/generalization.json), each with the command and date that measured it.

1. sources (issue 30, the default): the data, not the image. Synthetic testbed of 4 sites
   (`--synthetic-sources 4 --synthetic-covid-fraction 0.5`); `--synthetic-confound` sets how
   far the training sites' COVID rates spread apart (1: site-a none, site-b half, site-c
   all), and site-d keeps the overall rate and is always held out for test: its AUC is the
   held-out-site AUC. Variants: class = source (today), negatives from every site (confound
   0), validation on a held-out site (`--val-sources site-b`: the best epoch is chosen on a
   site the model never trained on), source balance (`--balance-sources`, at confound 0.8:
   at 1 each site holds one class, and there is nothing to even out) and the combination.
   site-b never trains (it is in test or validation), so every variant trains on as many
   images of sites a and c. All with the jobs' defaults: lung crop and appearance
   augmentation (off with --no-image-levers), early stopping and the best epoch by
   validation loss. The real sample has no sources (no metadata sheets), so this study has
   no real-data part.
2. levers (issue 17): the recipe without any lever and each lever of issue 17 on it, on
   a 3-site testbed (`--synthetic-confound 1`, `site-c` held out) and on the real sample
   (its own test split: the in-database cost of a lever, not its gain on unseen hospitals);
   no early stop.

Every number is the mean over the training seeds, with their range. Results go to
docs/benchmarks.md (section "generalization") and docs/benchmarks/generalization.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # as in benchmarks/preprocess.py

from benchmarks import common  # noqa: E402
from cxr.config import (AugmentConfig, LungFocusConfig, MarkingConfig, PreprocessConfig, SplitConfig,  # noqa: E402
                        SyntheticConfig, TrainConfig)

SECTION = "generalization"
STUDIES = ("sources", "levers")
PACKAGES = ("ray", "tensorflow-cpu", "tf-keras", "numpy", "scikit-image")
log = logging.getLogger("benchmark")

GEOMETRIC = AugmentConfig()
APPEARANCE = GEOMETRIC.with_appearance(1.0)
NO_LUNG_FOCUS, LUNG_CROP = LungFocusConfig(crop=False, suppress=False), LungFocusConfig(crop=True, suppress=False)
SPLIT_RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}  # a larger in-distribution test share than the job's 0.1

# ---------------------------------------------------------------- study 1: sources (issue 30)

SITES = 4
HELD_OUT_SITE = "site-d"  # the last site keeps the overall COVID rate (cxr.ingest.sources.site_covid_rates)
SPARE_SITE = "site-b"  # out of training in every variant: in test, or the validation site
HELD_OUT_AUC = f"{HELD_OUT_SITE} auc"  # a run's score (train_and_evaluate)


@dataclass(frozen=True)
class Variant:
    """A row of the sources study: how confounded the training sites are, which sites are held
    out of training and where, whether training balances sources, and the row it must beat."""

    confound: float
    test_sources: tuple[str, ...]
    val_sources: tuple[str, ...] = ()
    balance_sources: bool = False
    baseline: str | None = None

    def preprocess_changes(self, image_levers: bool = True) -> dict:
        # The levers spelled out rather than left to the jobs' defaults (which they are today),
        # so that a row means the same whatever the defaults become.
        return {"lungs": LUNG_CROP if image_levers else NO_LUNG_FOCUS, "markings": MarkingConfig(),
                "split": SplitConfig(**SPLIT_RATIOS, test_sources=self.test_sources, val_sources=self.val_sources),
                "confound": self.confound}

    def train_changes(self, image_levers: bool = True) -> dict:
        return {"augment": APPEARANCE if image_levers else GEOMETRIC, "balance_sources": self.balance_sources}

    @property
    def flags(self) -> str:
        flags = [f"--synthetic-confound {self.confound:g}", f"--test-sources {','.join(self.test_sources)}"]
        flags += [f"--val-sources {','.join(self.val_sources)}"] if self.val_sources else []
        return " ".join(flags + (["--balance-sources"] if self.balance_sources else []))


CLASS_IS_SOURCE, CLASS_FOLLOWS_SOURCE = "class = source", "class ~ source (0.8)"
BOTH_OUT = (SPARE_SITE, HELD_OUT_SITE)
VARIANTS = {
    CLASS_IS_SOURCE: Variant(1.0, BOTH_OUT),
    "negatives from every site": Variant(0.0, BOTH_OUT, baseline=CLASS_IS_SOURCE),
    "validation on a held-out site": Variant(1.0, (HELD_OUT_SITE,), (SPARE_SITE,), baseline=CLASS_IS_SOURCE),
    # At confound 1 each class has sources of its own only, and balance has nothing to even out.
    CLASS_FOLLOWS_SOURCE: Variant(0.8, BOTH_OUT),
    "source balance": Variant(0.8, BOTH_OUT, balance_sources=True, baseline=CLASS_FOLLOWS_SOURCE),
    "source balance + validation on a held-out site": Variant(0.8, (HELD_OUT_SITE,), (SPARE_SITE,),
                                                              balance_sources=True, baseline=CLASS_FOLLOWS_SOURCE),
}

# ---------------------------------------------------------------- study 2: levers (issue 17)

LEVERS_HELD_OUT_SITE = "site-c"


def _lever(lungs: LungFocusConfig = NO_LUNG_FOCUS, remove_all_markings: bool = False,
           augment: AugmentConfig = GEOMETRIC) -> tuple[dict, dict]:
    return {"lungs": lungs, "markings": MarkingConfig(remove_all=remove_all_markings)}, {"augment": augment}


# name -> (preprocessing settings, training settings). Every row spells out all three levers'
# settings: "no lever" is the recipe before issue 17, the others one lever each on it, and
# appearance augmentation with the lung crop (the replica's best, now the jobs' default).
LEVERS = {
    "no lever": _lever(),
    "appearance augmentation": _lever(augment=APPEARANCE),
    "remove all markings": _lever(remove_all_markings=True),
    "lung crop": _lever(lungs=LUNG_CROP),
    "lung crop + suppress": _lever(lungs=LungFocusConfig(crop=True, suppress=True)),
    "appearance + lung crop": _lever(lungs=LUNG_CROP, augment=APPEARANCE),
}


# The flags each study leaves to the other one (destination: flag).
FLAGS_NOT_READ_BY = {"sources": {"levers": "--levers", "real_images": "--real-images", "real_seeds": "--real-seeds",
                                 "data_source": "--data-source", "skip_synthetic": "--skip-synthetic",
                                 "skip_real": "--skip-real"},
                     "levers": {"variants": "--variants", "image_levers": "--no-image-levers"}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", choices=STUDIES, default="sources",
                        help="which study to measure; the section keeps the other's last results (default: "
                             "%(default)s)")
    parser.add_argument("--image-size", type=int, default=64, help="shard images' side (default: %(default)s)")
    parser.add_argument("--images", type=int, default=600, help="synthetic images (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="per run; early stopping as the job's in the sources study, none in the levers "
                             "study (default: %(default)s)")
    parser.add_argument("--seeds", type=common.number_list, default="0,1,2",
                        help="training seeds, comma-separated (default: %(default)s)")
    parser.add_argument("--variants", default=None,
                        help="sources study: comma-separated subset of the variants, by their first word(s)")
    parser.add_argument("--no-image-levers", dest="image_levers", action="store_false",
                        help="sources study: without the lung crop and appearance augmentation (the recipe before "
                             "issue 17), to see the data's part when the image levers leave the shortcut in place")
    parser.add_argument("--levers", default=None,
                        help="levers study: comma-separated subset of the levers, by their first word(s)")
    parser.add_argument("--real-images", type=int, default=None,
                        help="levers study: real images, spread over the classes (default: all of the sample)")
    parser.add_argument("--real-seeds", type=common.number_list, default=None,
                        help="levers study: training seeds on the real sample, which take longer (default: --seeds)")
    parser.add_argument("--data-source", type=Path, default=common.REAL_SAMPLE,
                        help="levers study: class-per-folder tree of real images (default: the shared sample)")
    parser.add_argument("--skip-synthetic", action="store_true", help="levers study: no synthetic testbed")
    parser.add_argument("--skip-real", action="store_true", help="levers study: no real sample")
    parser.add_argument("--no-write", action="store_true", help="print the results only; leave docs/ untouched")
    parser.add_argument("--smoke", action="store_true", help=common.SMOKE_HELP)
    args = parser.parse_args(argv)
    # A flag of the other study would be ignored without a word: refused instead.
    other = [flag for dest, flag in FLAGS_NOT_READ_BY[args.study].items()
             if getattr(args, dest) != parser.get_default(dest)]
    if other:
        parser.error(f"{', '.join(other)} {'applies' if len(other) == 1 else 'apply'} to the other study "
                     f"(--study {next(s for s in STUDIES if s != args.study)})")
    args.real_seeds = args.real_seeds or args.seeds
    return args


def chosen(table: dict, spec: str | None, flag: str) -> dict:
    """The rows of `table` whose names start with one of the comma-separated words of `spec`."""
    if not spec:
        return table
    wanted = [w.strip() for w in spec.split(",")]
    rows = {name: row for name, row in table.items() if any(name.startswith(w) for w in wanted)}
    if not rows:
        common.fail(f"{flag} {spec!r} names none of: {', '.join(table)}")
    return rows


# ---------------------------------------------------------------- running a setting


def synthetic_base(args, scratch: Path, sites: int, held_out: str) -> PreprocessConfig:
    return PreprocessConfig(
        source="synthetic", output=str(scratch / f"synthetic-{sites}"), image_size=args.image_size,
        synthetic=SyntheticConfig(images=args.images, size=max(64, 2 * args.image_size), covid_fraction=0.5,
                                  sources=sites, confound=1.0),
        split=SplitConfig(**SPLIT_RATIOS, test_sources=(held_out,)))


def real_base(args, scratch: Path) -> PreprocessConfig:
    source = args.data_source
    if not source.is_dir():
        common.fail(f"{source}: real images not found; pass --data-source DIR or --skip-real")
    source = str(source)
    if args.real_images is not None:
        from cxr.ingest import sources

        items = sources.list_source(PreprocessConfig(source=source)).items
        source = common.link_subset(common.spread(items, args.real_images), scratch / "real-subset")  # no copies
    return PreprocessConfig(source=source, output=str(scratch / "real"), image_size=args.image_size)


def shards_for(base: PreprocessConfig, changes: dict, made: dict) -> str:
    """The shards of `base` with `changes` (a "confound" of its synthetic testbed among them),
    preprocessed once per distinct setting."""
    from cxr.preprocess.pipeline import run_preprocess

    changes = dict(changes)
    if "confound" in changes:
        changes["synthetic"] = dataclasses.replace(base.synthetic, confound=changes.pop("confound"))
    key = repr(sorted((name, repr(value)) for name, value in changes.items()))
    if key not in made:
        config = dataclasses.replace(base, **changes, output=f"{base.output}-{len(made)}")
        run_preprocess(config)
        made[key] = config.output
    return made[key]


def split_sizes(shards: str) -> dict[str, int]:
    from cxr.artifacts import read_manifest

    return {split: counts.total for split, counts in read_manifest(shards).splits.items()}


def train_and_evaluate(shards: str, changes: dict, config: TrainConfig, scratch: Path, run_name: str) -> dict:
    """One training run of `config` with `changes`, scored: overall, per group and per source."""
    from cxr.config import EvaluateConfig
    from cxr.evaluate.job import run_evaluation
    from cxr.train.job import run_training

    run_training(dataclasses.replace(config, data=shards, storage=str(scratch / "runs"), name=run_name, **changes))
    report = run_evaluation(EvaluateConfig(run=str(scratch / "runs" / run_name), resamples=200, gradcam_examples=0))
    variants = report["shortcuts"]["variants"]
    training = report["model"]["training"]
    scores = {"accuracy": report["metrics"]["accuracy"]["value"], "auc": report["metrics"]["auc"]["value"],
              "auc_lungs_masked": variants["lungs_masked"]["auc"]["value"],
              "auc_lungs_only": variants["lungs_only"]["auc"]["value"],
              "epochs_trained": training["epochs_trained"],
              "best_epoch": None if training["best_epoch"] is None else training["best_epoch"] + 1}
    by_source = report.get("sources") or {}
    for key, group in (("held_out", "held-out sources"), ("in_distribution", "training sources")):
        if group in by_source.get("groups", {}):
            scores[f"{key}_auc"] = by_source["groups"][group]["auc"]["value"]
            scores[f"{key}_auc_lungs_masked"] = by_source["groups"][group].get("auc_lungs_masked", {}).get("value")
            scores[f"{key}_n"] = by_source["groups"][group]["n"]
    for name, m in by_source.get("per_source", {}).items():  # "site-d auc", "site-d auc_lungs_masked"
        scores[f"{name} auc"] = m["auc"]["value"]
        scores[f"{name} auc_lungs_masked"] = m.get("auc_lungs_masked", {}).get("value")
        scores[f"{name} n"] = m["n"]
    return scores


def run_name(what: str, index: int, name: str, seed: int) -> str:
    return f"{what}-{index}-" + "".join(c if c.isalnum() else "-" for c in name)[:30] + f"-s{seed}"


# ---------------------------------------------------------------- the studies


def sources_study(args, scratch: Path) -> dict:
    """Each variant on the 4-site testbed, trained with the job's early stopping and best epoch."""
    base = synthetic_base(args, scratch, SITES, HELD_OUT_SITE)
    made: dict = {}
    rows = {}
    for index, (name, variant) in enumerate(chosen(VARIANTS, args.variants, "--variants").items()):
        shards = shards_for(base, variant.preprocess_changes(args.image_levers), made)
        runs = []
        for seed in args.seeds:
            log.info("sources: %s, seed %d", name, seed)
            config = TrainConfig(epochs=args.epochs, seed=seed)  # the job's patience: early stopping as users get
            runs.append(train_and_evaluate(shards, variant.train_changes(args.image_levers), config, scratch,
                                           run_name("sources", index, name, seed)))
        rows[name] = {"runs": runs, "images": split_sizes(shards), "flags": variant.flags,
                      "baseline": variant.baseline, "confound": variant.confound}
    return {"rows": rows, "patience": TrainConfig().patience, "image_levers": args.image_levers,
            "site_rates": {f"{c:g}": site_rates(c) for c in sorted({v["confound"] for v in rows.values()})}}


def site_rates(confound: float) -> dict[str, float]:
    from cxr.ingest.sources import site_covid_rates, synthetic_source_name

    rates = site_covid_rates(SyntheticConfig(sources=SITES, covid_fraction=0.5, confound=confound))
    return {synthetic_source_name(site): round(rate, 3) for site, rate in enumerate(rates)}


def levers_part(base: PreprocessConfig, levers: dict, args, seeds: list[int], scratch: Path, what: str) -> dict:
    """Each lever on `base`, trained for --epochs without early stop."""
    made: dict = {}
    rows = {}
    for index, (name, (preprocess_changes, train_changes)) in enumerate(levers.items()):
        shards = shards_for(base, preprocess_changes, made)
        runs = []
        for seed in seeds:
            log.info("%s: %s, seed %d", what, name, seed)
            config = TrainConfig(epochs=args.epochs, patience=args.epochs, seed=seed)
            runs.append(train_and_evaluate(shards, train_changes, config, scratch, run_name(what, index, name, seed)))
        rows[name] = runs
    sizes = split_sizes(next(iter(made.values())))
    return {"runs": rows, "seeds": seeds, "test_images": sizes["test"], "train_images": sizes["train"]}


def levers_study(args, scratch: Path) -> dict:
    levers = chosen(LEVERS, args.levers, "--levers")
    results = {"synthetic_images": args.images}
    if not args.skip_synthetic:
        results["synthetic"] = levers_part(synthetic_base(args, scratch, 3, LEVERS_HELD_OUT_SITE), levers, args,
                                           args.seeds, scratch, "synthetic")
    if not args.skip_real:
        results["real"] = levers_part(real_base(args, scratch), levers, args, args.real_seeds, scratch, "real")
    return results


# ---------------------------------------------------------------- the section


def values(runs: list[dict], key: str) -> list[float]:
    return [run[key] for run in runs if run.get(key) is not None]


def summary(runs: list[dict], key: str, digits: int = 3) -> str:
    """The mean of `key` over the runs, with their range: "0.784 (0.77-0.80)"."""
    found = values(runs, key)
    if not found:
        return "n/a"
    if len(found) == 1:
        return f"{found[0]:.{digits}f}"
    return f"{mean(found):.{digits}f} ({min(found):.{max(0, digits - 1)}f}-{max(found):.{max(0, digits - 1)}f})"


def in_order(rows: dict, table: dict) -> dict:
    """`rows` in the order of the study's `table` (the raw JSON, read back, holds them sorted)."""
    rank = {name: index for index, name in enumerate(table)}
    return dict(sorted(rows.items(), key=lambda item: rank.get(item[0], len(rank))))


def gain(rows: dict, name: str) -> dict | None:
    """A variant's held-out-site AUC against its baseline's: the mean gain, the seeds' spread
    (the wider of the two rows' ranges) and whether the gain exceeds it (the issue's bar)."""
    baseline = rows[name]["baseline"]
    if baseline not in rows:
        return None
    ours, theirs = values(rows[name]["runs"], HELD_OUT_AUC), values(rows[baseline]["runs"], HELD_OUT_AUC)
    if not ours or not theirs:
        return None
    spread = max(max(ours) - min(ours), max(theirs) - min(theirs))
    difference = mean(ours) - mean(theirs)
    return {"baseline": baseline, "gain": difference, "spread": spread, "beats_spread": difference > spread}


def gain_cell(found: dict | None) -> str:
    if found is None:
        return "-"
    verdict = "**yes**" if found["beats_spread"] else "no"
    return f"{found['gain']:+.3f} vs {found['baseline']} (spread {found['spread']:.2f}): {verdict}"


def command(part: dict) -> str:
    return f"`python benchmarks/generalization.py{part['arguments']}`, {part['date']}"


def sources_markdown(part: dict) -> list[str]:
    rows = in_order(part["rows"], VARIANTS)
    rates = "; ".join(f"{confound}: " + ", ".join(f"{site} {rate:g}" for site, rate in by_site.items())
                      for confound, by_site in sorted(part["site_rates"].items(), reverse=True))
    gains = {name: gain(rows, name) for name in rows}
    image_levers = ("lung crop and appearance augmentation, the jobs' defaults" if part.get("image_levers", True)
                    else "without the lung crop and appearance augmentation (`--no-image-levers`: the recipe "
                         "before issue 17)")
    raised = [name for name, found in gains.items() if found and found["beats_spread"]]
    not_raised = [name for name, found in gains.items() if found and not found["beats_spread"]]
    lines = ["### Data that breaks the class-source link (issue 30), on a planted shortcut", "",
             f"{command(part)}: each variant preprocessed with `run_preprocess`, trained with `run_training` "
             f"(up to {part['epochs']} epochs, early stopping with the job's patience of {part['patience']}, the "
             f"exported model its best epoch by validation loss; {part['image_size']} px; {image_levers}) and "
             "scored with `run_evaluation`; the mean over seeds "
             f"{', '.join(map(str, part['seeds']))}, with their range in brackets.", "",
             f"Synthetic testbed: {part['synthetic_images']} images from {SITES} sites (`--synthetic-sources "
             f"{SITES} --synthetic-covid-fraction 0.5`), each site's COVID rate by `--synthetic-confound` ({rates}). "
             f"`{HELD_OUT_SITE}` keeps the overall rate and is held out for test in every variant: its AUC is the "
             f"held-out-site AUC. `{SPARE_SITE}` never trains either (it is in test, or the validation site), so "
             "every variant trains on the same number of images of sites a and c. The in-distribution AUC is on "
             "the test split's share of the training sites. The real sample has no sources (no metadata sheets), "
             "so this study has no real-data part; the levers' cost on it is in the next part.", "",
             common.markdown_table(
                 ["variant", "flags", "train / val / test images", "best epoch", "in-distribution AUC",
                  f"held-out-site AUC ({HELD_OUT_SITE})", f"{HELD_OUT_SITE} AUC, lungs blacked out",
                  "gain over its baseline: more than the seeds' spread?"],
                 [[name, f"`{row['flags']}`", " / ".join(str(row["images"][k]) for k in ("train", "val", "test")),
                   summary(row["runs"], "best_epoch", digits=1), summary(row["runs"], "in_distribution_auc"),
                   summary(row["runs"], HELD_OUT_AUC), summary(row["runs"], f"{HELD_OUT_SITE} auc_lungs_masked"),
                   gain_cell(gains[name])] for name, row in rows.items()]), "",
             "How to read it: a variant helps when it raises the held-out-site AUC by more than the seeds' spread "
             "(the wider range of it and its baseline). "
             + (f"Raised it by more: {', '.join(raised)}. " if raised else "None raised it by more than the spread. ")
             + (f"Did not: {', '.join(not_raised)}." if not_raised else ""), ""]
    return lines


def levers_markdown(part: dict) -> list[str]:
    lines = ["### The image-level levers of issue 17, on a planted shortcut and on the real sample", "",
             f"{command(part)}: each setting trained with `run_training` ({part['epochs']} epochs, no early stop, "
             f"{part['image_size']} px) and scored with `run_evaluation`; the mean over the training seeds "
             "each part names, with their range in brackets. Levers: appearance "
             "augmentation is `jobs/train.py --appearance-augment 1`; the others are `jobs/preprocess.py` "
             "flags (`--remove-all-markings`, `--lung-crop`, `--lung-suppress`). \"no lever\" is "
             "`--no-lung-crop` and `--appearance-augment 0`, the recipe before issue 17.", ""]
    if "synthetic" in part:
        s = part["synthetic"]
        lines += [f"Synthetic testbed: {part['synthetic_images']} images from 3 sites, COVID share 0.5, confound 1 "
                  f"(the first training site holds no COVID, the second only COVID), `{LEVERS_HELD_OUT_SITE}` held "
                  f"out; {s['train_images']} training and {s['test_images']} test images; seeds "
                  f"{', '.join(map(str, s['seeds']))}.", "",
                  common.markdown_table(
                      ["setting", "in-distribution AUC", "held-out-source AUC", "held-out AUC, lungs blacked out",
                       "AUC, lungs only (all test)"],
                      [[name, summary(runs, "in_distribution_auc"), summary(runs, "held_out_auc"),
                        summary(runs, "held_out_auc_lungs_masked"), summary(runs, "auc_lungs_only")]
                       for name, runs in in_order(s["runs"], LEVERS).items()]), ""]
    if "real" in part:
        r = part["real"]
        lines += [f"Real sample: {r['train_images']} training and {r['test_images']} test images of the shared "
                  "sample, its own test split (same database: no source held out); seeds "
                  f"{', '.join(map(str, r['seeds']))}.", "",
                  common.markdown_table(
                      ["setting", "test accuracy", "test AUC", "AUC, lungs blacked out", "AUC, lungs only"],
                      [[name, summary(runs, "accuracy"), summary(runs, "auc"), summary(runs, "auc_lungs_masked"),
                        summary(runs, "auc_lungs_only")] for name, runs in in_order(r["runs"], LEVERS).items()]), ""]
    lines += ["How to read it: the held-out-source AUC is the number a lever must raise; the in-distribution and "
              "real test AUCs are what it costs. The shortcut check blacks out a fixed lung template, fitted to "
              "the frame of lung-cropped images, where the lungs fill most of it: with a crop, blacking out the "
              "lungs leaves little else, so a low 'lungs blacked out' AUC is weaker evidence than without.", ""]
    return lines


def report(results: dict) -> str:
    lines = ["## Generalization: does the model read the lungs, on sources it never saw?", ""]
    for study, markdown in (("sources", sources_markdown), ("levers", levers_markdown)):
        if study in results:
            lines += markdown(results[study]) + [f"Machine:\n{common.machine_markdown(results[study]['machine'])}",
                                                 ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:  # one seed, one epoch, tiny; the variants that hold a validation site and balance sources
        args = common.smoke(args, study="sources", images=96, epochs=1, seeds=[0],
                            variants=f"{CLASS_IS_SOURCE},source balance +")
    common.require_own_ray()
    from cxr.keras_lib import configure_environment

    configure_environment()
    import ray

    from cxr import runtime

    runtime.setup_logging()
    part: dict = {"date": datetime.date.today().isoformat(),
                  "arguments": "".join(f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])),
                  "machine": common.machine_description(PACKAGES), "image_size": args.image_size,
                  "epochs": args.epochs, "seeds": args.seeds, "synthetic_images": args.images}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-generalization-") as scratch:
        runtime.ensure_ray()
        study = sources_study if args.study == "sources" else levers_study
        part.update(study(args, Path(scratch)))
        ray.shutdown()
    # The study not run keeps its last results, each part with its own command and date.
    results = {**common.read_raw(SECTION), args.study: part}
    common.publish(SECTION, report(results), results, write=not args.no_write)
    return 0


if __name__ == "__main__":
    from cxr.runtime import run_job

    run_job(main)
