"""cxr: chest X-rays to a trained, evaluated COVID-19 classifier, on a laptop or a Ray cluster."""

__version__ = "0.1.0"
