"""jobs/tune.py: hyperparameter search over the training job with Ray Tune."""
