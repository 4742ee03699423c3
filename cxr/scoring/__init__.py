"""Scoring, shared by evaluation and prediction: an exported model, loaded once per Ray Data
actor, applied to images read from shards or preprocessed from raw files as training saw them."""
