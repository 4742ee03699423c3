"""Preprocessing (jobs/preprocess.py): raw images to Parquet shards and their manifest.

Per-image transforms and the marking detector, the Ray Data pipeline, the shard writer and
the manifest writer. Scoring reuses `pipeline.process_image`, so serving preprocesses as
training did."""
