"""The planted-shortcut testbed: synthetic sites that differ as hospitals do, and a class confound.

A classifier that reads the site (its border, noise and brightness, which preprocessing
keeps) scores well on the training sites when their COVID rates differ, and no better than
chance within the held-out site, whose images are as often COVID whatever they look like.
A classifier that reads the lungs scores about the same on both. Images are preprocessed
as the job does without its lung crop (CLAHE, 64 px), so the shortcut is one a model would
really see, frame included.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxr.config import LungFocusConfig, PreprocessConfig, SyntheticConfig
from cxr.errors import UserError
from cxr.evaluate.metrics import roc_auc
from cxr.ingest.sources import BatchReader, list_synthetic, site_covid_rates
from cxr.ingest.synthetic import SITES, render_synthetic
from cxr.preprocess.pipeline import process_image
from cxr.preprocess.transforms import decode_png_gray


def preprocessed_sites(confound: float) -> dict[str, np.ndarray]:
    """240 images of three sites (the last held out), preprocessed at 64 px: pixels, labels, sites."""
    spec = SyntheticConfig(images=240, size=128, sources=3, confound=confound, covid_fraction=0.5,
                           marking_fraction=0.0, duplicate_fraction=0.0)
    config = PreprocessConfig(image_size=64, synthetic=spec, lungs=LungFocusConfig(crop=False))
    pixels, labels, sites = [], [], []
    with BatchReader(spec) as reader:
        for item in list_synthetic(spec).items:
            result = process_image(reader.read(item)[0], config)
            if result["status"] != "ok":  # a site's letter now and then scores as a marking
                continue
            pixels.append(decode_png_gray(result["image_png"]).astype(np.float64) / 255)
            labels.append(int(item["class_name"] == "COVID"))
            sites.append(item["source"])
    return {"pixels": np.stack(pixels), "labels": np.array(labels), "sites": np.array(sites)}


@pytest.fixture(scope="module")
def confounded():
    return preprocessed_sites(confound=0.8)


def site_statistics(image: np.ndarray) -> list[float]:
    """What tells sites apart, and nothing about the lungs: frame, noise, brightness, the corner marker."""
    frame = np.concatenate([image[:3].ravel(), image[-3:].ravel(), image[:, :3].ravel(), image[:, -3:].ravel()])
    return [frame.mean(), np.abs(np.diff(image[16:48, 16:48], axis=1)).mean(), image.mean(), image[:10, :10].max()]


def outer_lower_lungs(image: np.ndarray) -> float:
    """Where the synthetic COVID opacities are: the outer lower lung zones, against the upper
    zones of the same lungs (against the whole image, the site's look would leak in)."""
    h, w = image.shape
    lower, upper = slice(int(0.45 * h), int(0.68 * h)), slice(int(0.22 * h), int(0.38 * h))
    columns = (slice(int(0.19 * w), int(0.29 * w)), slice(int(0.71 * w), int(0.81 * w)))
    return sum(image[lower, c].mean() - image[upper, c].mean() for c in columns) / 2


def logistic_scores(train_x, train_y, test_x, steps: int = 2000) -> np.ndarray:
    """A plain logistic regression on standardised features, fitted by gradient descent."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-9
    x = np.c_[(train_x - mean) / std, np.ones(len(train_x))]
    weights = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-x @ weights))
        weights -= 0.5 * x.T @ (p - train_y) / len(train_y)
    return np.c_[(test_x - mean) / std, np.ones(len(test_x))] @ weights


def in_and_out_auc(data: dict, features) -> tuple[float, float]:
    """AUC of a classifier of `features` fitted on half of the training sites' images: on their
    other half (in distribution) and on the held-out site."""
    x = np.array([features(image) for image in data["pixels"]])
    x = x if x.ndim == 2 else x[:, None]
    labels, held_out = data["labels"], data["sites"] == SITES[2].name
    fit = ~held_out & (np.arange(len(labels)) % 2 == 0)
    inside = ~held_out & ~fit
    scores = logistic_scores(x[fit], labels[fit], x)
    return roc_auc(labels[inside], scores[inside]), roc_auc(labels[held_out], scores[held_out])


def test_site_statistics_predict_the_class_in_distribution_but_not_on_the_held_out_site(confounded):
    inside, held_out = in_and_out_auc(confounded, site_statistics)
    assert inside > 0.8, inside
    assert held_out < 0.65, held_out
    assert inside - held_out > 0.25


def test_the_lungs_predict_the_class_alike_everywhere(confounded):
    inside, held_out = in_and_out_auc(confounded, outer_lower_lungs)
    assert inside > 0.7 and held_out > 0.65, (inside, held_out)
    assert abs(inside - held_out) < 0.15


def test_without_the_confound_the_site_says_nothing_about_the_class():
    inside, _ = in_and_out_auc(preprocessed_sites(confound=0.0), site_statistics)
    assert inside < 0.7, inside


def test_confound_sets_the_training_sites_rates_and_keeps_the_last_at_the_overall_rate():
    spec = SyntheticConfig(images=600, sources=4, confound=1.0, covid_fraction=0.3)
    rates = site_covid_rates(spec)
    assert rates == pytest.approx([0.0, 0.3, 0.6, 0.3])
    items = list_synthetic(spec).items
    for site, rate in zip(SITES, rates):
        mine = [i for i in items if i["source"] == site.name]
        assert len(mine) == 150
        assert np.mean([i["class_name"] == "COVID" for i in mine]) == pytest.approx(rate, abs=0.01)
    assert np.mean([i["class_name"] == "COVID" for i in items]) == pytest.approx(0.3, abs=0.01)
    assert all(i["source_uri"].startswith(f"synthetic://seed-0/{i['source']}/") for i in items)
    half = site_covid_rates(SyntheticConfig(sources=3, confound=0.5, covid_fraction=0.3))
    assert half == pytest.approx([0.15, 0.45, 0.3])


def test_copies_stay_within_their_site():
    spec = SyntheticConfig(images=300, sources=3, duplicate_fraction=0.1)
    items = list_synthetic(spec).items
    site_of_render = {}
    for item in items:
        site_of_render.setdefault((item["class_name"], item["synthetic_index"]), set()).add(item["source"])
    assert sum(i["synthetic_index"] != n for n, i in enumerate(items)) > 20
    assert all(len(sites) == 1 for sites in site_of_render.values())


def test_sites_change_the_acquisition_not_the_disease():
    """The same patient at two sites: the lungs' opacities are the same; what differs is the
    look of the whole picture. COVID and Normal of one site share everything outside the lungs."""
    for site in range(len(SITES)):
        covid = [render_synthetic("COVID", i, size=96, marking_fraction=0.0, site=site).pixels for i in range(40)]
        normal = [render_synthetic("Normal", i, size=96, marking_fraction=0.0, site=site).pixels for i in range(40)]
        for statistic in (lambda im: site_statistics(im.astype(np.float64) / 255)[0],
                          lambda im: im[: im.shape[0] // 6].mean()):
            a, b = np.array([statistic(im) for im in covid]), np.array([statistic(im) for im in normal])
            spread = np.sqrt((a.var() + b.var()) / 2) + 1e-9
            assert abs(a.mean() - b.mean()) < 0.5 * spread, SITES[site].name


def test_site_config_is_checked():
    with pytest.raises(UserError, match="needs --synthetic-sources 3"):
        SyntheticConfig(sources=2, confound=0.5)
    with pytest.raises(UserError, match=r"in \[1, 6\]"):
        SyntheticConfig(sources=7)
    with pytest.raises(ValueError, match="site must be"):
        render_synthetic("COVID", 0, site=6)
