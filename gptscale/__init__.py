"""gptscale: GPT-style generative pre-training and discriminative fine-tuning at cluster scale."""

__version__ = "0.1.0"
