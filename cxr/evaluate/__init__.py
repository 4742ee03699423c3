"""Evaluation (jobs/evaluate.py): metrics with intervals, shortcut checks, Grad-CAM, the
report and the model card."""
