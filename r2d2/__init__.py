"""r2d2: pre-training, fine-tuning, evaluation and shipping of R2D2 Chinese vision-language models."""

__version__ = "0.1.0"
