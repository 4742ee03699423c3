"""Near-duplicates in the real sample: how many, how many crossed the splits, pairs at the threshold.

    python benchmarks/near_duplicates.py [--data PATH] [--distance 24] [--image-size 128]
                                         [--keep DIR] [--limit N] [--no-write] [--smoke]

1. Preprocesses the sample as before this check (`--near-duplicate-distance -1`; the
   fingerprints are stored anyway) and, from its shards, counts at several distances the
   near-duplicate groups, their images, the largest group, the groups filed under two
   classes, and the groups whose images the split put in different splits.
2. Preprocesses it again with `--distance`: no group crosses the splits now (checked),
   and the manifest counts the groups and the conflicting images rejected.
3. Draws the closest pairs just under and just over `--distance` side by side
   (docs/near_duplicates.png), to check the threshold by eye.

Both shard sets are kept under `--keep` (default: a temp dir, removed), at the quality
benchmark's headline size, so that its test accuracy and AUC with and without the
grouping are one command each, printed at the end:
`python benchmarks/quality.py --shards DIR/after --skip-ablation --no-write`.
Results go to docs/benchmarks.md (section "near_duplicates") and docs/benchmarks/near_duplicates.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # as in benchmarks/preprocess.py

from benchmarks import common  # noqa: E402

SECTION = "near_duplicates"
PACKAGES = ("numpy", "scipy", "scikit-image", "pillow")
SWEEP = (8, 16, 24, 32, 40, 48, 64)
PAIRS_PER_SIDE = 4
FIGURE = REPO / "docs" / "near_duplicates.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=common.REAL_SAMPLE,
                        help="class-per-folder tree of real images (default: the shared sample)")
    parser.add_argument("--distance", type=int, default=24, help="the threshold checked (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=128,
                        help="the quality benchmark's headline size (default: %(default)s)")
    parser.add_argument("--keep", type=Path, default=None, help="keep both shard sets here (default: a temp dir)")
    parser.add_argument("--limit", type=int, default=None, help="use N images, evenly spread (a quick check)")
    parser.add_argument("--no-write", action="store_true", help="print the results only; leave docs/ untouched")
    parser.add_argument("--smoke", action="store_true", help=common.SMOKE_HELP)
    return parser.parse_args(argv)


def kept_rows(output: Path) -> list[dict]:
    """Every kept image of a shard set: source_uri, class_name, split, fingerprint, image_png."""
    import pyarrow.parquet as pq

    from cxr.artifacts import read_manifest
    from cxr import storage

    manifest, rows = read_manifest(str(output)), []
    for split in manifest.shards:
        for path in manifest.split_paths(storage.resolve(str(output)), split):
            table = pq.read_table(path, columns=["source_uri", "class_name", "fingerprint", "image_png"])
            rows += [{**r, "split": split} for r in table.to_pylist()]
    return rows


def sweep(rows: list[dict]) -> list[dict]:
    """Groups at each distance of SWEEP, in the split made without grouping."""
    from cxr.preprocess.fingerprints import near_duplicate_groups

    prints = [r["fingerprint"] for r in rows]
    results = []
    for distance in SWEEP:
        members: dict[int, list[dict]] = defaultdict(list)
        for row, group in zip(rows, near_duplicate_groups(prints, distance)):
            members[group].append(row)
        groups = [g for g in members.values() if len(g) > 1]
        results.append({"distance": distance, "groups": len(groups), "images": sum(map(len, groups)),
                        "largest": max(map(len, groups), default=0),
                        "two_classes": sum(len({r["class_name"] for r in g}) > 1 for g in groups),
                        "crossing_splits": sum(len({r["split"] for r in g}) > 1 for g in groups)})
    return results


def pairs_near(rows: list[dict], distance: int) -> tuple[list, list]:
    """The closest pairs at or just under `distance`, and just over it: (distance, row, row)."""
    from cxr.preprocess.fingerprints import BLOCK_ROWS, as_words, bit_distances

    words = as_words([r["fingerprint"] for r in rows])
    under, over = [], []
    for start in range(0, len(words), BLOCK_ROWS):
        block = bit_distances(words[start:start + BLOCK_ROWS], words)
        for i, j in zip(*np.nonzero((block > distance - 8) & (block <= distance + 8))):
            a, b = start + int(i), int(j)
            if a < b:
                (under if block[i, j] <= distance else over).append((int(block[i, j]), a, b))
    under = sorted(under, reverse=True)[:PAIRS_PER_SIDE]  # the farthest still grouped
    over = sorted(over)[:PAIRS_PER_SIDE]  # the closest not grouped
    return ([(d, rows[a], rows[b]) for d, a, b in under], [(d, rows[a], rows[b]) for d, a, b in over])


def draw_pairs(under: list, over: list, distance: int) -> bytes:
    from cxr import plotting
    from cxr.preprocess.transforms import decode_png_gray

    plt = plotting.pyplot()
    pairs = [("grouped", p) for p in under] + [("not grouped", p) for p in over]
    figure, axes = plt.subplots(max(1, len(pairs)), 2, figsize=(5, 2.6 * max(1, len(pairs))), squeeze=False)
    for row, (verdict, (bits, first, second)) in enumerate(pairs):
        for column, image in enumerate((first, second)):
            axis = axes[row, column]
            axis.imshow(decode_png_gray(image["image_png"]), cmap="gray")
            axis.set_axis_off()
            axis.set_title(f"{image['source_uri'].rsplit('/', 1)[-1]}", fontsize=7)
        axes[row, 0].text(-0.1, 0.5, f"{bits} bits\n{verdict}", transform=axes[row, 0].transAxes,
                          ha="right", va="center", fontsize=8)
    figure.suptitle(f"Pairs around the threshold ({distance} of 256 bits)", fontsize=9)
    return plotting.png(plt, figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args = common.smoke(args, data=common.smoke_images(), image_size=64, keep=common.scratch_folder("cxr-near-"))
    common.require_real_images(args.data)
    common.require_own_ray()
    from cxr import runtime
    from cxr.config import PreprocessConfig
    from cxr.ingest import sources
    from cxr.preprocess.pipeline import run_preprocess

    runtime.setup_logging()
    keep = args.keep or Path(tempfile.mkdtemp(prefix="cxr-near-"))
    source = str(args.data)
    if args.limit is not None:
        items = sources.list_source(PreprocessConfig(source=source)).items
        source = common.link_subset(common.spread(items, args.limit), keep / "subset")
    base = PreprocessConfig(source=source, image_size=args.image_size, overwrite=True)
    manifests = {}
    for name, distance in (("before", -1), ("after", args.distance)):
        config = dataclasses.replace(base, output=str(keep / name),
                                     split=dataclasses.replace(base.split, near_duplicate_distance=distance))
        manifests[name] = run_preprocess(config)
    before, after = kept_rows(keep / "before"), kept_rows(keep / "after")
    still_crossing = next(s for s in sweep(after) if s["distance"] == args.distance)["crossing_splits"]
    if still_crossing:
        raise RuntimeError(f"{still_crossing} groups still cross the splits")  # a bug
    under, over = pairs_near(before, args.distance)
    results = {
        "data": str(args.data), "date": datetime.date.today().isoformat(), "distance": args.distance,
        "image_size": args.image_size, "images": len(before),
        "arguments": " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": common.machine_description(PACKAGES), "sweep_before": sweep(before),
        "after": {"near_duplicates": manifests["after"]["counts"]["near_duplicates"],
                  "rejected_by_reason": manifests["after"]["counts"]["rejected_by_reason"],
                  "splits": {s: c["total"] for s, c in manifests["after"]["counts"]["splits"].items()}},
        "pairs": {side: [{"bits": d, "a": a["source_uri"], "b": b["source_uri"]} for d, a, b in pairs]
                  for side, pairs in (("grouped", under), ("not_grouped", over))},
        "shards": {name: str(keep / name) for name in manifests},
    }
    figure = draw_pairs(under, over, args.distance)
    if not args.no_write:
        FIGURE.write_bytes(figure)
    common.publish(SECTION, render(results), results, write=not args.no_write)
    print(f"\ntest accuracy and AUC with the grouping: python benchmarks/quality.py --shards {keep / 'after'} "
          f"--skip-ablation --no-write\n(and without it: --shards {keep / 'before'})")
    if args.keep is None:
        print(f"(the shard sets are in {keep}; remove it when done)")
    return 0


def render(results: dict) -> str:
    rows = [[s["distance"], s["groups"], s["images"], s["largest"], s["two_classes"], s["crossing_splits"]]
            for s in results["sweep_before"]]
    after = results["after"]
    pairs = [[side.replace("_", " "), p["bits"], p["a"].rsplit("/", 1)[-1], p["b"].rsplit("/", 1)[-1]]
             for side, listed in results["pairs"].items() for p in listed]
    return "\n".join([
        "## Near-duplicates in the real sample",
        "",
        f"`python benchmarks/near_duplicates.py{(' ' + results['arguments']) if results['arguments'] else ''}` on "
        f"{results['date']}: {results['images']} kept images at {results['image_size']} px, 256-bit fingerprints.",
        "",
        common.machine_markdown(results["machine"]),
        "",
        "Groups at each distance, in the split made without grouping (the split before this check):",
        "",
        common.markdown_table(["distance (bits)", "groups", "images in groups", "largest", "filed under two classes",
                               "crossing splits"], rows),
        "",
        f"With `--near-duplicate-distance {results['distance']}`: {after['near_duplicates'].get('groups', 0)} groups "
        f"({after['near_duplicates'].get('images_in_groups', 0)} images) kept within one split; rejects "
        f"{after['rejected_by_reason']}; splits {after['splits']}.",
        "",
        "Pairs just under and just over the threshold (figure: `docs/near_duplicates.png`):",
        "",
        common.markdown_table(["", "bits", "image", "image"], pairs),
    ])


if __name__ == "__main__":
    sys.exit(main())
