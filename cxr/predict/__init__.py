"""Batch prediction (jobs/predict.py): raw images in, one row of probabilities per file out."""
