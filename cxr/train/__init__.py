"""Training (jobs/train.py): shards to an exported model, with Ray Train and Keras 2."""
