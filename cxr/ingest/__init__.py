"""Ingest: where images come from. Sources are listed on the driver (a folder, a zip, S3,
synthetic, Kaggle) and read, or downloaded, in Ray workers (jobs/preprocess.py's first stage)."""
