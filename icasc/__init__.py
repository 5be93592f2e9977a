"""icasc: attention-supervised training of image classifiers (ICASC) and an explainability toolkit."""

__version__ = "0.1.0"
