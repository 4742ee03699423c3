"""Shared fixtures: a real local Ray, a real S3 server (SeaweedFS), the shared real images."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.s3_fixture import local_s3, s3_bucket, s3_client, s3_env  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent


def shared_sample_dir() -> Path | None:
    """The real COVID-19 Radiography sample beside the repo, if it is there."""
    configured = os.environ.get("CXR_SHARED_DATA")
    candidate = Path(configured) if configured else REPO.parent / "shared" / "data" / "covid19-radiography-sample"
    dataset = candidate / "COVID-19_Radiography_Dataset"
    return dataset if dataset.is_dir() else None


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """`<class>/images/*.png` of real chest X-rays; skips when the shared data is absent."""
    path = shared_sample_dir()
    if path is None:
        pytest.skip("real chest X-ray sample not found (../shared/data/covid19-radiography-sample "
                    "or $CXR_SHARED_DATA)")
    return path


@pytest.fixture(scope="session", autouse=True)
def no_real_kaggle(tmp_path_factory: pytest.TempPathFactory):
    """Every Kaggle client in the tests, and in the jobs they start, talks to localhost:7777
    (tests/kaggle_server.py), with no credentials but those a test gives."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
        patch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path_factory.mktemp("kaggle_config")))
        for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture
def fake_kaggle():
    """A local Kaggle API serving a miniature COVID-19 Radiography Database (tests/kaggle_server.py)."""
    from tests.kaggle_server import FakeKaggle

    server = FakeKaggle().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_session(local_s3):
    """One local Ray for the whole session: starting Ray costs 3 to 15 s here.

    Its workers get the test S3 server's settings in their environment, as a cluster's
    workers get theirs from the node (each worker builds its own S3 client).
    """
    import ray
    from ray.data import DataContext

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": local_s3.env()})
    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_shards(ray_session, tmp_path_factory) -> str:
    """A few hundred 64 px synthetic images, preprocessed once for every module that trains
    on them (no test writes into them)."""
    from cxr.config import PreprocessConfig, SyntheticConfig
    from cxr.preprocess.pipeline import run_preprocess

    output = str(tmp_path_factory.mktemp("tiny") / "shards")
    run_preprocess(PreprocessConfig(output=output, image_size=64, synthetic=SyntheticConfig(images=240, size=160)))
    return output


@pytest.fixture(scope="session")
def tiny_run(tiny_shards, tmp_path_factory) -> Path:
    """A run trained once on tiny_shards (2 epochs, no augmentation) for every test that only
    needs some trained model to score, evaluate or export: `<run>/model/` is its export.
    Tests may write reports beside it, never into model/."""
    from cxr.config import AugmentConfig, TrainConfig
    from cxr.train.job import run_training

    storage = tmp_path_factory.mktemp("tiny_run") / "runs"
    run_training(TrainConfig(data=tiny_shards, storage=str(storage), name="tiny", epochs=2, batch_size=16,
                             augment=AugmentConfig(0, 0, 0)))
    return storage / "tiny"
