"""Whisper's decoding rules (mlservices.whisper_decoding.constrain) on a vocabulary of twelve tokens.

Ids 0-4 are text (0 a blank, never first; 3 a suppressed symbol), 5 the end of text, 6
<|startoftranscript|>, 7 <|nospeech|>, 8 <|notimestamps|>, 9-11 the
timestamps <|0.00|>, <|0.02|>, <|0.04|>. Logits that favour text, then each rule's mask.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mlservices.whisper_decoding import Rules, constrain  # noqa: E402

TEXT, EOS, SOT, NOSPEECH, NOTS, T0, T1, T2 = (0, 1, 2, 4), 5, 6, 7, 8, 9, 10, 11
VOCAB = 12


def mask(*ids: int) -> torch.Tensor:
    out = torch.zeros(VOCAB, dtype=torch.bool)
    out[list(ids)] = True
    return out


RULES = Rules(
    sot=SOT, eos=EOS, no_timestamps=NOTS, timestamp_begin=T0, no_speech=NOSPEECH, max_initial_timestamp=1,
    max_length=448, languages={}, tasks={}, suppress=mask(3, SOT, NOSPEECH), begin_suppress=mask(0, EOS),
    ids=torch.arange(VOCAB),
)  # fmt: skip


def allowed(generated: list[list[int]], timestamps: bool = True, logits: torch.Tensor | None = None) -> list[list[int]]:
    if logits is None:  # text likelier than the timestamps together
        logits = torch.zeros(len(generated), VOCAB)
        logits[:, :T0] = 3.0
    out = constrain(logits, generated, RULES, timestamps)
    return [[i for i in range(VOCAB) if row[i] > float("-inf")] for row in out]


def test_the_first_token_is_an_early_timestamp():
    assert allowed([[]]) == [[T0, T1]]  # max_initial_timestamp=1: not <|0.04|>


def test_text_after_an_opening_timestamp_and_time_never_goes_back():
    # after <|0.00|> text: more text, the end, or a later timestamp (not <|0.00|> again)
    assert allowed([[T0, 1]]) == [[0, 1, 2, 4, EOS, T1, T2]]


def test_a_closing_timestamp_is_followed_by_an_opening_one_or_the_end():
    assert allowed([[T0, 1, T1]]) == [[EOS, T1, T2]]  # the next segment may open where this one closed


def test_two_timestamps_in_a_row_are_followed_by_text():
    assert allowed([[T0, 1, T1, T1]]) == [[0, 1, 2, 4, EOS]]


def test_rows_follow_their_own_history():
    assert allowed([[T0, 1, T1], [T0, 1, T1, T1]]) == [[EOS, T1, T2], [0, 1, 2, 4, EOS]]


def test_timestamps_win_when_together_they_are_likelier_than_any_text_token():
    logits = torch.zeros(1, VOCAB)
    logits[0, [T1, T2]] = 1.0  # e + e > e^0, the best text token
    assert allowed([[T0, 1]], logits=logits) == [[T1, T2]]


def test_without_timestamps_none_is_written_and_the_blank_never_starts():
    assert allowed([[]], timestamps=False) == [[1, 2, 4]]
    assert allowed([[1]], timestamps=False) == [[0, 1, 2, 4, EOS]]
