"""Generalization: does a lever make the model read the lungs, on sources it never saw?

    python benchmarks/generalization.py [--image-size 64] [--images 600] [--real-images 3800]
                                        [--epochs 8] [--seeds 0,1,2] [--real-seeds 0,1,2] [--levers NAME,...]
                                        [--skip-synthetic] [--skip-real] [--no-write]

For the recipe without any lever and each lever of issue 17 on it (and appearance
augmentation with the lung crop, the replica's best), trained with
`run_training` and scored with `run_evaluation` as users do:

1. Synthetic testbed: `--synthetic-sources 3 --synthetic-confound 1
   --synthetic-covid-fraction 0.5`, `site-c` held out (`--test-sources site-c`): in the
   training sites the class is the site, in the held-out one it is not. In-distribution
   AUC (the training sites' test images), held-out-source AUC, and the shortcut check
   (AUC with the lung fields blacked out, with only the lungs left).
2. Real sample (the shared chest X-rays): test-split accuracy and AUC and the same
   shortcut check. Its sources are not held out (the sample carries no metadata sheets),
   so this is the in-database cost of a lever, not its gain on unseen hospitals.

Every number is the mean over --seeds training seeds, with their range. A lever is worth
making a default when it raises the held-out-source AUC; what it costs in-distribution is
the price. Results go to docs/benchmarks.md (section "generalization") and
docs/benchmarks/generalization.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import sys
import tempfile
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # as in benchmarks/preprocess.py

from benchmarks import common  # noqa: E402
from cxr.config import (AugmentConfig, LungFocusConfig, MarkingConfig, PreprocessConfig, SplitConfig,  # noqa: E402
                        SyntheticConfig, TrainConfig)

SECTION = "generalization"
PACKAGES = ("ray", "tensorflow-cpu", "tf-keras", "numpy", "scikit-image")
HELD_OUT_SITE = "site-c"
log = logging.getLogger("benchmark")

# name -> (preprocessing settings, training settings). Every row spells out all three levers'
# settings rather than changes to the job's defaults, so that a row means the same whatever
# the defaults are: "no lever" is the recipe before issue 17, the others one lever each on
# it, and appearance augmentation with the lung crop (the replica's best).
GEOMETRIC = AugmentConfig()
APPEARANCE = GEOMETRIC.with_appearance(1.0)
NO_LUNG_FOCUS, LUNG_CROP = LungFocusConfig(crop=False, suppress=False), LungFocusConfig(crop=True, suppress=False)


def _lever(lungs: LungFocusConfig = NO_LUNG_FOCUS, remove_all_markings: bool = False,
           augment: AugmentConfig = GEOMETRIC) -> tuple[dict, dict]:
    return {"lungs": lungs, "markings": MarkingConfig(remove_all=remove_all_markings)}, {"augment": augment}


LEVERS = {
    "no lever": _lever(),
    "appearance augmentation": _lever(augment=APPEARANCE),
    "remove all markings": _lever(remove_all_markings=True),
    "lung crop": _lever(lungs=LUNG_CROP),
    "lung crop + suppress": _lever(lungs=LungFocusConfig(crop=True, suppress=True)),
    "appearance + lung crop": _lever(lungs=LUNG_CROP, augment=APPEARANCE),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=64, help="shard images' side (default: %(default)s)")
    parser.add_argument("--images", type=int, default=600, help="synthetic images (default: %(default)s)")
    parser.add_argument("--real-images", type=int, default=None,
                        help="real images, spread over the classes (default: all of the sample)")
    parser.add_argument("--epochs", type=int, default=8, help="per run, no early stop (default: %(default)s)")
    parser.add_argument("--seeds", type=common.seed_list, default="0,1,2",
                        help="training seeds, comma-separated (default: %(default)s)")
    parser.add_argument("--real-seeds", type=common.seed_list, default=None,
                        help="training seeds on the real sample, which take longer (default: --seeds)")
    parser.add_argument("--levers", default=None, help="comma-separated subset of the levers, by their first word(s)")
    parser.add_argument("--data-source", type=Path, default=common.REAL_SAMPLE,
                        help="class-per-folder tree of real images (default: the shared sample)")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print the results only; leave docs/ untouched")
    args = parser.parse_args(argv)
    args.real_seeds = args.real_seeds or args.seeds
    return args


def chosen_levers(spec: str | None) -> dict:
    if not spec:
        return LEVERS
    wanted = [w.strip() for w in spec.split(",")]
    chosen = {name: lever for name, lever in LEVERS.items() if any(name.startswith(w) for w in wanted)}
    if not chosen:
        common.fail(f"--levers {spec!r} names none of: {', '.join(LEVERS)}")
    return chosen


def synthetic_base(args, scratch: Path) -> PreprocessConfig:
    return PreprocessConfig(
        source="synthetic", output=str(scratch / "synthetic"), image_size=args.image_size,
        synthetic=SyntheticConfig(images=args.images, size=max(64, 2 * args.image_size), covid_fraction=0.5,
                                  sources=3, confound=1.0),
        split=SplitConfig(0.7, 0.1, 0.2, test_sources=(HELD_OUT_SITE,)))


def real_base(args, scratch: Path) -> PreprocessConfig:
    source = args.data_source
    if not source.is_dir():
        common.fail(f"{source}: real images not found; pass --data-source DIR or --skip-real")
    source = str(source)
    if args.real_images is not None:
        from benchmarks.preprocess import link_subset, spread
        from cxr.ingest import sources

        items = sources.list_source(PreprocessConfig(source=source)).items
        source = link_subset(spread(items, args.real_images), scratch / "real-subset")  # symlinks, no copies
    return PreprocessConfig(source=source, output=str(scratch / "real"), image_size=args.image_size)


def shards_for(base: PreprocessConfig, changes: dict, made: dict) -> str:
    """The shards of `base` with `changes`, preprocessed once per distinct setting."""
    from cxr.preprocess.pipeline import run_preprocess

    config = dataclasses.replace(base, **changes)
    key = repr(sorted((name, repr(value)) for name, value in changes.items()))
    if key not in made:
        config = dataclasses.replace(config, output=f"{base.output}-{len(made)}")
        run_preprocess(config)
        made[key] = config.output
    return made[key]


def train_and_evaluate(shards: str, changes: dict, seed: int, epochs: int, scratch: Path, name: str) -> dict:
    from cxr.config import EvaluateConfig
    from cxr.evaluate.job import run_evaluation
    from cxr.train.job import run_training

    run_name = "".join(c if c.isalnum() else "-" for c in name)[:40] + f"-s{seed}"
    config = dataclasses.replace(TrainConfig(data=shards, storage=str(scratch / "runs"), name=run_name,
                                             epochs=epochs, patience=epochs, seed=seed), **changes)
    run_training(config)
    report = run_evaluation(EvaluateConfig(run=str(scratch / "runs" / run_name), resamples=200, gradcam_examples=0))
    variants = report["shortcuts"]["variants"]
    scores = {"accuracy": report["metrics"]["accuracy"]["value"], "auc": report["metrics"]["auc"]["value"],
              "auc_lungs_masked": variants["lungs_masked"]["auc"]["value"],
              "auc_lungs_only": variants["lungs_only"]["auc"]["value"]}
    groups = (report.get("sources") or {}).get("groups", {})
    for key, group in (("held_out", "held-out sources"), ("in_distribution", "training sources")):
        if group in groups:
            scores[f"{key}_auc"] = groups[group]["auc"]["value"]
            scores[f"{key}_auc_lungs_masked"] = groups[group].get("auc_lungs_masked", {}).get("value")
            scores[f"{key}_n"] = groups[group]["n"]
    return scores


def study(base: PreprocessConfig, levers: dict, args, seeds: list[int], scratch: Path, what: str) -> dict:
    made: dict = {}
    rows = {}
    for name, (preprocess_changes, train_changes) in levers.items():
        shards = shards_for(base, preprocess_changes, made)
        runs = []
        for seed in seeds:
            log.info("%s: %s, seed %d", what, name, seed)
            runs.append(train_and_evaluate(shards, train_changes, seed, args.epochs, scratch, f"{what}-{name}"))
        rows[name] = runs
    from cxr.artifacts import read_manifest

    manifest = read_manifest(next(iter(made.values())))
    return {"runs": rows, "seeds": seeds, "test_images": manifest.splits["test"].total,
            "train_images": manifest.splits["train"].total}


def summary(runs: list[dict], key: str) -> str:
    values = [run[key] for run in runs if run.get(key) is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{mean(values):.3f} ({min(values):.2f}-{max(values):.2f})"


def report(results: dict) -> str:
    lines = ["## Generalization: the levers of issue 17, on a planted shortcut and on the real sample", "",
             f"`python benchmarks/generalization.py{results['arguments']}`, {results['date']}: each setting "
             f"trained with `run_training` ({results['epochs']} epochs, no early stop, "
             f"{results['image_size']} px) and scored with `run_evaluation`; the mean over the training seeds "
             "each part names, with their range in brackets. Levers: appearance "
             "augmentation is `jobs/train.py --appearance-augment 1`; the others are `jobs/preprocess.py` "
             "flags (`--remove-all-markings`, `--lung-crop`, `--lung-suppress`). \"no lever\" is "
             "`--no-lung-crop` and `--appearance-augment 0`, the recipe before issue 17.", ""]
    if "synthetic" in results:
        s = results["synthetic"]
        lines += [f"Synthetic testbed: {results['synthetic_images']} images from 3 sites, COVID share 0.5, "
                  f"confound 1 (the first training site holds no COVID, the second only COVID), `{HELD_OUT_SITE}` "
                  f"held out; {s['train_images']} training and {s['test_images']} test images; seeds "
                  f"{', '.join(map(str, s['seeds']))}.", "",
                  common.markdown_table(
                      ["setting", "in-distribution AUC", "held-out-source AUC", "held-out AUC, lungs blacked out",
                       "AUC, lungs only (all test)"],
                      [[name, summary(runs, "in_distribution_auc"), summary(runs, "held_out_auc"),
                        summary(runs, "held_out_auc_lungs_masked"), summary(runs, "auc_lungs_only")]
                       for name, runs in s["runs"].items()]), ""]
    if "real" in results:
        r = results["real"]
        lines += [f"Real sample: {r['train_images']} training and {r['test_images']} test images of the shared "
                  "sample, its own test split (same database: no source held out); seeds "
                  f"{', '.join(map(str, r['seeds']))}.",
                  "",
                  common.markdown_table(
                      ["setting", "test accuracy", "test AUC", "AUC, lungs blacked out", "AUC, lungs only"],
                      [[name, summary(runs, "accuracy"), summary(runs, "auc"), summary(runs, "auc_lungs_masked"),
                        summary(runs, "auc_lungs_only")] for name, runs in r["runs"].items()]), ""]
    lines += ["How to read it: the held-out-source AUC is the number a lever must raise; the in-distribution and "
              "real test AUCs are what it costs. The shortcut check blacks out a fixed lung template, fitted to "
              "the frame of lung-cropped images, where the lungs fill most of it: with a crop, blacking out the "
              "lungs leaves little else, so a low 'lungs blacked out' AUC is weaker evidence than without.", "",
              f"Machine:\n{common.machine_markdown(results['machine'])}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.require_own_ray()
    from cxr.keras_lib import configure_environment

    configure_environment()
    import ray

    from cxr import runtime

    runtime.setup_logging()
    levers = chosen_levers(args.levers)
    results: dict = {"date": datetime.date.today().isoformat(),
                     "arguments": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
                     "machine": common.machine_description(PACKAGES), "image_size": args.image_size,
                     "epochs": args.epochs, "seeds": args.seeds, "synthetic_images": args.images}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-generalization-") as scratch:
        scratch = Path(scratch)
        runtime.ensure_ray()
        if not args.skip_synthetic:
            results["synthetic"] = study(synthetic_base(args, scratch), levers, args, args.seeds, scratch, "synthetic")
        if not args.skip_real:
            results["real"] = study(real_base(args, scratch), levers, args, args.real_seeds, scratch, "real")
        ray.shutdown()
    common.publish(SECTION, report(results), results, write=not args.no_write)
    return 0


if __name__ == "__main__":
    from cxr.runtime import run_job

    run_job(main)
