"""Language models, from counting to transformers.

    BigramLM, NGramLM                count-based (a table of next-token frequencies)
    NeuralBigramLM, NeuralNGramLM    the same conditionals learned by gradient descent
    GPT(GPTConfig)                   the transformer; GPTConfig.from_preset("babygpt" | "babygpt-lowrank" |
                                     "shakespeare-cpu" | "gpt-mini" | "gpt2", **overrides)
"""

from .bigram import BigramLM, NeuralBigramLM
from .gpt import GPT, GPTConfig
from .ngram import NeuralNGramLM, NGramLM
from .presets import PRESETS

__all__ = ["BigramLM", "NeuralBigramLM", "NGramLM", "NeuralNGramLM", "GPT", "GPTConfig", "PRESETS"]
