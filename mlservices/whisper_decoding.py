"""Greedy Whisper decoding of a batch of windows, written out: prompt, rules, stopping.

``transformers``' ``generate`` does the same work with more of it: its logits
processors rebuild their masks over the 51,865-token vocabulary at every step
(a fifth of the decoding time in a profile on a 2-core CPU), a window that has ended keeps being
decoded until the longest one ends, and the no-speech probability needs a
decoder pass of its own. Here, for a batch of encoded windows:

1. ``<|startoftranscript|>`` is read first. Its logits give each window's
   no-speech probability and, where no language was given, its language
   (the language token with the highest logit), as OpenAI's Whisper does.
2. The rest of the prompt, ``<|xx|><|transcribe|>`` (``<|notimestamps|>``
   without timestamps), is read in one step.
3. Tokens are chosen greedily under Whisper's rules (``constrain``): OpenAI's
   ``SuppressBlank``, ``SuppressTokens`` and ``ApplyTimestampRules``, in that
   order, as ``transformers`` applies them too.
4. A window leaves the batch as soon as it ends (``<|endoftext|>``, or the
   token limit); the key/value cache of the others is kept.

::

    rules = Rules.of(network.generation_config, network.config)
    decoded = greedy(network, hidden, rules, languages=["en", None], task="transcribe", timestamps=True)
    decoded[1].language, decoded[1].tokens, decoded[1].no_speech, decoded[1].avg_logprob
    # -> 'de', [50364, 13347, ...], 0.01, -0.21

``avg_logprob`` is the mean log-probability (before the rules) of the chosen
tokens and the end of text, which OpenAI's no-speech rule compares with -1.
"""

from __future__ import annotations

import dataclasses

NEG = float("-inf")


@dataclasses.dataclass(frozen=True)
class Rules:
    """The token ids and vocabulary masks of one checkpoint (``Rules.of``)."""

    sot: int  # <|startoftranscript|>
    eos: int  # <|endoftext|>: ids below it are text
    no_timestamps: int  # <|notimestamps|>
    timestamp_begin: int  # <|0.00|>: ids from it on are timestamps
    no_speech: int  # <|nospeech|> (<|nocaptions|>)
    max_initial_timestamp: int | None  # the first timestamp is at most this many steps
    max_length: int  # prompt and generated tokens, at most
    languages: dict[str, int]  # ISO code -> token id (empty: an English-only checkpoint)
    tasks: dict[str, int]  # transcribe / translate -> token id
    suppress: object  # bool tensor over the vocabulary: never generated
    begin_suppress: object  # bool tensor: not generated first (a blank, the end of text)
    ids: object  # arange over the vocabulary

    @classmethod
    def of(cls, generation, config, device="cpu") -> Rules:
        """From a Whisper ``GenerationConfig`` and model config."""
        import torch

        vocab = config.vocab_size

        def mask(tokens) -> torch.Tensor:
            out = torch.zeros(vocab, dtype=torch.bool, device=device)
            out[[t for t in tokens or () if 0 <= t < vocab]] = True
            return out

        multilingual = bool(getattr(generation, "is_multilingual", False) and getattr(generation, "lang_to_id", None))
        return cls(
            sot=generation.decoder_start_token_id,
            eos=generation.eos_token_id,
            no_timestamps=generation.no_timestamps_token_id,
            timestamp_begin=generation.no_timestamps_token_id + 1,
            no_speech=generation.no_timestamps_token_id - 1,
            max_initial_timestamp=getattr(generation, "max_initial_timestamp_index", None),
            max_length=config.max_target_positions,
            languages={t.strip("<|>"): i for t, i in generation.lang_to_id.items()} if multilingual else {},
            tasks=dict(getattr(generation, "task_to_id", None) or {}),
            suppress=mask(generation.suppress_tokens),
            begin_suppress=mask(generation.begin_suppress_tokens),
            ids=torch.arange(vocab, device=device),
        )


@dataclasses.dataclass(frozen=True)
class Decoded:
    """What one window decoded to: its generated tokens (no prompt, no end of text) and more."""

    tokens: list[int]
    language: str | None
    no_speech: float  # P(<|nospeech|>) after <|startoftranscript|>
    avg_logprob: float


def constrain(logits, generated: list[list[int]], rules: Rules, timestamps: bool):
    """The next token's logits (``rows × vocabulary``, a new tensor) with what Whisper
    may not write next set to -inf, given each row's tokens so far (all rows have
    generated as many).

    Text and timestamps: a timestamp after text opens or closes a segment; two
    timestamps in a row must be followed by text; a lone closing timestamp must
    be followed by another timestamp or the end; timestamps never go back; the
    first token is a timestamp of at most ``max_initial_timestamp``; and when
    the timestamps together are likelier than the best text token, a timestamp
    it is. Without timestamps, none is written.
    """
    import torch

    tb, first = rules.timestamp_begin, not generated[0]
    logits = logits.masked_fill(rules.suppress, NEG)
    if first:
        logits.masked_fill_(rules.begin_suppress, NEG)
    logits[:, rules.no_timestamps] = NEG
    if not timestamps:
        logits[:, tb:] = NEG
        return logits
    last = [bool(g) and g[-1] >= tb for g in generated]
    penultimate = [len(g) < 2 or g[-2] >= tb for g in generated]
    floors = []
    for g, was_last, was_penultimate in zip(generated, last, penultimate):
        stamp = next((t for t in reversed(g) if t >= tb), None)
        # a closing timestamp may repeat the opening one (an empty segment); otherwise time moves on
        floors.append(tb if stamp is None else stamp if was_last and not was_penultimate else stamp + 1)
    device = logits.device
    text_only = torch.tensor([a and b for a, b in zip(last, penultimate)], device=device)[:, None]
    stamp_only = torch.tensor([a and not b for a, b in zip(last, penultimate)], device=device)[:, None]
    is_stamp = rules.ids >= tb
    logits.masked_fill_(text_only & is_stamp, NEG)
    logits.masked_fill_(stamp_only & (rules.ids < rules.eos), NEG)
    logits.masked_fill_(is_stamp & (rules.ids < torch.tensor(floors, device=device)[:, None]), NEG)
    if first:
        logits[:, :tb] = NEG
        if rules.max_initial_timestamp is not None:
            logits[:, tb + rules.max_initial_timestamp + 1 :] = NEG
    logprobs = logits.float().log_softmax(dim=-1)
    stamps_likelier = logprobs[:, tb:].logsumexp(dim=-1) > logprobs[:, :tb].max(dim=-1).values
    logits[:, :tb] = logits[:, :tb].masked_fill(stamps_likelier[:, None], NEG)
    return logits


def encode(network, features):
    """The encoder's output for a batch of log-mel windows (``rows × 80 × 3000``)."""
    return network.get_encoder()(features).last_hidden_state


class _Decoder:
    """The decoder of ``network`` over a batch of encoded windows, with its key/value cache."""

    def __init__(self, network, hidden):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self.decoder = network.get_decoder()
        self.head = network.proj_out
        self.hidden = hidden
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def step(self, ids):
        """The logits (float32) after the last of ``ids`` (``rows × n`` new tokens)."""
        out = self.decoder(input_ids=ids, encoder_hidden_states=self.hidden, past_key_values=self.cache, use_cache=True)
        return self.head(out.last_hidden_state[:, -1]).float()

    def keep(self, rows) -> None:
        """Go on with these rows only."""
        self.cache.batch_select_indices(rows)
        self.hidden = self.hidden[rows]


def listen(network, hidden, rules: Rules):
    """Read ``<|startoftranscript|>``: each window's no-speech probability, the language
    its logits point to (None for an English-only checkpoint), the logits themselves,
    and the decoder, ready to go on."""
    import torch

    decoder = _Decoder(network, hidden)
    logits = decoder.step(torch.full((hidden.shape[0], 1), rules.sot, device=hidden.device))
    no_speech = logits.softmax(dim=-1)[:, rules.no_speech].tolist()
    if not rules.languages:
        return no_speech, [None] * hidden.shape[0], logits, decoder
    codes = list(rules.languages)
    best = logits[:, [rules.languages[c] for c in codes]].argmax(dim=-1).tolist()
    return no_speech, [codes[i] for i in best], logits, decoder


def greedy(
    network, hidden, rules: Rules, *, languages: list[str | None], task: str, timestamps: bool,
    max_new_tokens: int | None = None,
) -> list[Decoded]:  # fmt: skip
    """Decode each encoded window of ``hidden`` (``rows × frames × width``); a language
    of None is detected from the window itself (see the module docstring)."""
    import torch

    rows, device = hidden.shape[0], hidden.device
    no_speech, detected, logits, decoder = listen(network, hidden, rules)
    languages = [given or found for given, found in zip(languages, detected)]
    rest = [
        ([rules.languages[language], rules.tasks[task]] if rules.languages else [])
        + ([] if timestamps else [rules.no_timestamps])
        for language in languages
    ]
    if rest[0]:  # else (English-only, with timestamps) the prompt is <|startoftranscript|> alone
        logits = decoder.step(torch.tensor(rest, device=device))
    limit = max_new_tokens or rules.max_length - 1 - len(rest[0])
    generated: list[list[int]] = [[] for _ in range(rows)]
    logprob = [0.0] * rows
    chosen_count = [0] * rows
    active = list(range(rows))
    while True:
        chosen = constrain(logits, [generated[r] for r in active], rules, timestamps).argmax(dim=-1)
        raw = logits.log_softmax(dim=-1).gather(1, chosen[:, None])[:, 0].tolist()
        keep = []
        for j, (r, token) in enumerate(zip(active, chosen.tolist())):
            logprob[r] += raw[j]
            chosen_count[r] += 1
            if token == rules.eos:
                continue
            generated[r].append(token)
            if len(generated[r]) < limit:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            decoder.keep(index)
            chosen = chosen[index]
            active = [active[j] for j in keep]
        logits = decoder.step(chosen[:, None])
    return [
        Decoded(generated[r], languages[r], no_speech[r], logprob[r] / chosen_count[r]) for r in range(rows)
    ]
