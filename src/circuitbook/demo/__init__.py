"""The embedded default: a handcrafted model with documented mechanisms and the corpus it was made for."""

from .corpus import WORDS, generate_stories, vocabulary
from .model import Demo, build_demo, class_ids, demo_tokenizer

__all__ = ["Demo", "build_demo", "class_ids", "demo_tokenizer", "generate_stories", "vocabulary", "WORDS"]
