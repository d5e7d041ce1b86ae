"""posttrain: post-train language models from checked YAML recipes, on top of Hugging Face TRL."""

__version__ = "0.1.0"
