"""What the Hugging Face text servings share: tokenising into length buckets, and torch threads.

``tokenized(tokenizer, text, max_chars, max_length)`` cuts the text to
``max_chars`` characters, tokenises it to at most ``max_length`` tokens and
returns the batch item (the ids the model takes), whether anything was cut,
and the batch key: ``length_bucket`` of its length, so a short text is never
padded to the length of a long one::

    length_bucket(5), length_bucket(17), length_bucket(128)   # -> (16, 32, 128)

``set_torch_threads(model, n)`` is a torch serving's ``set_threads``.
"""

from __future__ import annotations

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def length_bucket(n_tokens: int) -> int:
    """The smallest power of two ≥ n_tokens, at least 16: the batch key."""
    bucket = 16
    while bucket < n_tokens:
        bucket *= 2
    return bucket


def tokenized(tokenizer, text: str, max_chars: int, max_length: int) -> tuple[dict, bool, int]:
    """(the model's inputs, whether the text was cut, the batch key)."""
    encoding = tokenizer(text[:max_chars], truncation=True, max_length=max_length)
    overflow = encoding.encodings[0].overflowing if encoding.encodings else []
    ids = {k: v for k, v in encoding.items() if k in MODEL_INPUTS}
    return ids, len(text) > max_chars or bool(overflow), length_bucket(len(ids["input_ids"]))


def set_torch_threads(model, n: int) -> None:
    """A torch serving's ``set_threads``: intra-op threads for the calling thread's next batch
    (``torch.set_num_threads`` applies to the OpenMP and MKL work of the thread that calls it)."""
    import torch

    torch.set_num_threads(n)
