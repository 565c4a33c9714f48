"""The decoding loop, and the strategies that choose each step's tokens.

One loop serves both families. A *family* (:class:`~glassformer.generation.gpt.DecoderOnly`,
:class:`~glassformer.generation.seq2seq.EncoderDecoder`) knows how to get the next-token logits
of the rows it holds (prefill, cached step, sliding window, encoder memory) and how to keep a
subset of its rows; a *strategy* turns logits into tokens and decides which rows live on:

* :class:`Sampler` — greedy (temperature 0: the argmax) or sampling (temperature > 0, with
  top-k / top-p); one row per input, and a row leaves the batch when it ends;
* :class:`BeamSearch` — ``num_beams`` rows per input, ranked by total log-probability.

Per step the loop runs ``logits -> strategy.choose -> family.next``. ``on_step`` receives a
:class:`Step` with the raw logits, the scores the choice was made from and the chosen tokens
(the generation inspector's trace is such a callback); ``streamer(row, token)`` is called for
every new token of the sampler.

The order of the logit processing (the same as :func:`.sampling.sample_next`):

    suppress_tokens -> repetition penalty -> temperature -> top-k -> top-p -> softmax -> draw

Beam search (as in fairseq): keep the ``k`` best partial outputs of each input by total
log-probability. At each step take the 2k best one-token extensions; an extension ending in eos
(or completing a stop string) that ranks within the first k becomes a finished hypothesis, the
best k others live on. An input is done when k hypotheses have finished, or when
``max_new_tokens`` is reached (live beams then finish as they are). The answer is the finished
hypothesis with the best length-normalised score

    score(y) = log P(y | x) / len(y) ** length_penalty        (len counts the eos token)

``length_penalty`` 0 compares plain log-probabilities (favouring short outputs); 1 compares the
mean per-token log-probability. With ``num_beams=1`` the sampler's greedy path is used, which is
what a beam of width one computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from glassformer.generation.config import GenerationConfig
from glassformer.generation.sampling import check_finite_scores, draw, filter_logits, penalize_seen
from glassformer.io import eval_mode

Streamer = Callable[[int, int], None]  # streamer(input_row, token_id), called once per new token


@dataclass
class Hyp:
    """One sequence being generated."""

    src: int  # the input (prompt or source) it continues
    tokens: list[int]  # what the decoder has read: GPT prompt + new; encoder-decoder start + new
    new: list[int] = field(default_factory=list)  # the generated tokens
    start: int = 0  # GPT's sliding window: first token of the context
    text: str = ""  # generated text so far (kept only for stop strings)
    decoder: object | None = None  # a StreamDecoder, when there are stop strings


@dataclass
class Step:
    """What one decoding step saw and chose (handed to ``on_step``)."""

    index: int  # 0 for the first new token
    rows: list[int]  # the input each row of ``logits`` belongs to
    logits: Tensor  # (A, V) the model's raw next-token scores, fp32
    scores: Tensor  # (A, V) what the choice was made from: processed logits (sampler) or log-probs (beams)
    tokens: list[int]  # the chosen id per row (beam search: per new beam)
    origins: list[int] | None = None  # beam search: the row each new beam extends
    attentions: dict[str, list[Tensor]] | None = None  # kind -> per layer (A, H, Tk): the newest position's row


class Family(Protocol):
    """What the loop needs from a model family's decoding state."""

    vocab_size: int
    device: torch.device
    attentions: dict[str, list[Tensor]] | None  # of the last call, when asked for

    def first(self, live: list[Hyp]) -> Tensor:
        """(A, V) logits for the first new token of every row."""

    def next(self, index: list[int] | None, tokens: Tensor, live: list[Hyp]) -> Tensor:
        """Keep rows ``index`` (None: all, in order), feed ``tokens`` (A,), return the next (A, V) logits."""


def first_not_none(*values):
    """The first value that is not None (None when all are)."""
    return next((v for v in values if v is not None), None)


def resolve(config: GenerationConfig | None, overrides: dict) -> GenerationConfig:
    """``config`` (the defaults when None) with keyword ``overrides`` replacing single fields."""
    if config is not None and not isinstance(config, GenerationConfig):
        raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}")
    config = config or GenerationConfig()
    return config.replace(**overrides) if overrides else config


def right_pad(rows: list[list[int]], pad: int, width: int | None = None) -> Tensor:
    """(B, N) ids: each row followed by ``pad`` up to N (the longest row, or ``width``)."""
    n = max(len(r) for r in rows) if width is None else width
    out = torch.full((len(rows), n), pad, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def eos_set(eos_token_id: int | Sequence[int] | None, default: int | None) -> set[int]:
    """The ids that end a sequence: the given one(s), else the model's (an empty list: none)."""
    if eos_token_id is None:
        return set() if default is None else {int(default)}
    if isinstance(eos_token_id, (list, tuple, set, frozenset)):
        return {int(i) for i in eos_token_id}
    return {int(eos_token_id)}  # an int, or a 0-d tensor / numpy integer


def suppress_mask(ids: Sequence[int], vocab_size: int, device: torch.device) -> Tensor | None:
    """(V,) bool, True on the ids that must never be generated; None when there are none."""
    if not ids:
        return None
    bad = [i for i in ids if not 0 <= int(i) < vocab_size]
    if bad:
        raise ValueError(f"suppress_tokens holds id {bad[0]}, outside the vocabulary [0, {vocab_size})")
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[torch.tensor([int(i) for i in ids], dtype=torch.long, device=device)] = True
    return mask


def decode_model(
    model,
    family: Family,
    live: list[Hyp],
    config: GenerationConfig,
    *,
    tokenizer=None,
    streamer: Streamer | None = None,
    on_step: Callable[[Step], None] | None = None,
    beam_search: bool | None = None,
) -> list[list[int]]:
    """:func:`decode` for ``model``, the part both families' entry points share: the model in eval
    mode (dropout would make cached and uncached decoding differ) and the eos ids of the config,
    else the model's."""
    with eval_mode(model):
        return decode(family, live, config, eos_set(config.eos_token_id, model.config.eos_token_id),
                      tokenizer=tokenizer, streamer=streamer, on_step=on_step, beam_search=beam_search)


def decode(
    family: Family,
    live: list[Hyp],
    config: GenerationConfig,
    eos: set[int],
    *,
    tokenizer=None,
    streamer: Streamer | None = None,
    on_step: Callable[[Step], None] | None = None,
    beam_search: bool | None = None,
) -> list[list[int]]:
    """Run the loop; returns each input's new tokens (a list per input, in input order).

    ``beam_search`` None uses beam search when ``num_beams > 1``; True runs it even with one
    beam (which computes what greedy decoding computes: the tests check that it does).
    """
    stop = [s for s in config.stop if s]
    if stop and tokenizer is None:
        raise ValueError("stop strings need tokenizer= to turn the generated ids into text")
    if (config.num_beams > 1) if beam_search is None else beam_search:
        if streamer is not None:
            raise ValueError("streaming shows one sequence as it grows; beam search chooses only at the end")
        strategy: Sampler | BeamSearch = BeamSearch(config, family, live, eos, stop, tokenizer, on_step)
    else:
        strategy = Sampler(config, family, live, eos, stop, tokenizer, streamer, on_step)
    logits = family.first(live)
    for step in range(config.max_new_tokens):
        last = step == config.max_new_tokens - 1
        live, index, tokens = strategy.choose(step, logits.float(), live, last)
        if not live or last:
            break
        logits = family.next(index, tokens, live)
    return strategy.results()


class Sampler:
    """Greedy (temperature 0) or sampled decoding: one row per input, finished rows leave."""

    def __init__(self, config, family, live, eos, stop, tokenizer, streamer, on_step) -> None:
        self.config, self.family, self.eos, self.stop = config, family, eos, stop
        self.streamer, self.on_step = streamer, on_step
        self.hyps = list(live)  # every input's row, in input order
        device = family.device
        self.banned = suppress_mask(config.suppress_tokens, family.vocab_size, device)
        # without a seed, sampling uses torch's global generator (not reproducible, as asked)
        self.generators = None
        if config.temperature > 0 and config.seed is not None:
            self.generators = [torch.Generator(device=device).manual_seed(config.seed + h.src) for h in live]
        self.seen = None  # (A, V) bool: the tokens each row has read, for the repetition penalty
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros(len(live), family.vocab_size, dtype=torch.bool)
            for j, h in enumerate(live):
                self.seen[j, torch.tensor(h.tokens, dtype=torch.long)] = True
            self.seen = self.seen.to(device)
        self.max_stop = max((len(s) for s in stop), default=0)
        if stop:
            from glassformer.tokenizers import StreamDecoder  # data layer; only needed for stop strings

            for h in live:
                h.decoder = StreamDecoder(tokenizer, skip_special_tokens=True)

    def choose(self, step: int, logits: Tensor, live: list[Hyp], last: bool):
        c = self.config
        check_finite_scores(logits)
        scores = logits
        if self.banned is not None:
            scores = scores.masked_fill(self.banned, float("-inf"))
        if self.seen is not None:
            scores = penalize_seen(scores, self.seen, c.repetition_penalty)
        if c.temperature == 0:
            tokens = scores.argmax(dim=-1)  # (A,)
        else:
            scores = filter_logits(scores, c.temperature, c.top_k, c.top_p)
            gens = [self.generators[h.src] for h in live] if self.generators is not None else None
            tokens = draw(scores, gens)  # (A,)
        ids = tokens.tolist()  # the one host sync of the step: the loop needs the ids to stop rows
        if self.on_step is not None:
            self.on_step(Step(step, [h.src for h in live], logits, scores, ids,
                              attentions=self.family.attentions))
        keep = []
        for j, (h, token) in enumerate(zip(live, ids)):
            h.tokens.append(token)
            h.new.append(token)
            if self.streamer is not None:
                self.streamer(h.src, token)
            if token in self.eos:
                continue
            if self.stop:
                seen = len(h.text)
                h.text += h.decoder.push(token)
                tail = h.text[max(0, seen - self.max_stop + 1) :]
                if any(s in tail for s in self.stop):
                    continue
            keep.append(j)
        if last:
            return [live[j] for j in keep], None, tokens
        index = None
        if len(keep) < len(live):  # finished rows leave the batch
            index = keep
            where = torch.tensor(keep, dtype=torch.long, device=tokens.device)
            tokens = tokens.index_select(0, where)
            if self.seen is not None:
                self.seen = self.seen.index_select(0, where)
        if self.seen is not None:
            self.seen.scatter_(1, tokens.unsqueeze(1), True)
        return [live[j] for j in keep], index, tokens

    def results(self) -> list[list[int]]:
        return [h.new for h in self.hyps]


def check_beams_fit(num_beams: int, inputs: int, family: Family) -> None:
    """Refuse a beam count whose rows (inputs × beams, each with its KV cache and a row of scores
    over the vocabulary) cannot fit in the device's memory, before any is allocated."""
    from glassformer.memory import check_fits, generation_bytes

    config = getattr(getattr(family, "model", None), "config", None)
    layers = (getattr(config, "n_layers", 0) or 0) + (getattr(config, "decoder_layers", 0) or 0)
    length = getattr(family, "capacity", None) or getattr(config, "max_len", 0) or 0
    need = generation_bytes(0, sequences=inputs * num_beams, total_len=length, d_model=getattr(config, "d_model", 0) or 0,
                            n_layers=layers, vocab_size=family.vocab_size)
    check_fits(need, family.device, f"num_beams {num_beams} for {inputs} input(s)",
               "use fewer beams (--beam)")


class BeamSearch:
    """``num_beams`` rows per input; see the module docstring."""

    def __init__(self, config, family, live, eos, stop, tokenizer, on_step) -> None:
        self.k, self.v, self.lp = config.num_beams, family.vocab_size, config.length_penalty
        check_beams_fit(self.k, len(live), family)
        self.family, self.eos, self.stop, self.tokenizer, self.on_step = family, eos, stop, tokenizer, on_step
        self.device = family.device
        self.banned = suppress_mask(config.suppress_tokens, self.v, self.device)
        self.finished: list[list[tuple[float, list[int]]]] = [[] for _ in live]
        self.scores = torch.zeros(len(live), 1, device=self.device)  # (A, rows per input) total log-probability

    def _ends(self, hyp: Hyp, token: int) -> bool:
        if token in self.eos:
            return True
        if not self.stop:
            return False
        text = self.tokenizer.decode(hyp.new + [token], skip_special_tokens=True)
        return any(s in text for s in self.stop)

    def choose(self, step: int, logits: Tensor, live: list[Hyp], last: bool):
        k, v = self.k, self.v
        a = self.scores.shape[0]  # inputs still searching
        per = self.scores.shape[1]  # rows per input: 1 at the first step, k afterwards
        check_finite_scores(logits)
        logp = torch.log_softmax(logits, dim=-1)  # (A·per, V)
        if self.banned is not None:  # never chosen; the others keep their probabilities
            logp = logp.masked_fill(self.banned, float("-inf"))
        cand = (self.scores.unsqueeze(-1) + logp.view(a, per, v)).view(a, per * v)  # (A, per·V)
        top_scores, top_idx = cand.topk(min(2 * k, per * v), dim=-1)  # (A, 2k)
        rows, new_scores, new_tokens, survivors = [], [], [], []
        for j, (row_scores, row_idx) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
            src, going = live[j * per].src, []  # going: (total, origin row, token) of this input's next beams
            for rank, (total, idx) in enumerate(zip(row_scores, row_idx)):
                if total == float("-inf"):
                    break  # only impossible extensions remain
                origin, token = divmod(idx, v)
                hyp = live[j * per + origin]
                if self._ends(hyp, token):
                    if rank < k:  # an ending that ranks among the best k finishes a hypothesis
                        self._finish(src, total, hyp.new + [token])
                    continue
                going.append((total, j * per + origin, token))
                if len(going) == k:
                    break
            if len(self.finished[src]) >= k or not going:
                continue  # this input is done
            if last:  # out of room: the live beams finish as they are
                for total, row, token in going:
                    self._finish(src, total, live[row].new + [token])
                continue
            going += [(float("-inf"), going[0][1], going[0][2])] * (k - len(going))  # fill up with dead beams
            survivors.append(j)
            for total, row, token in going:
                rows.append(row)
                new_scores.append(total)
                new_tokens.append(token)
        if self.on_step is not None:
            self.on_step(Step(step, [h.src for h in live], logits, logp, new_tokens, origins=rows,
                              attentions=self.family.attentions))
        if not survivors:
            return [], None, None
        new_live = [Hyp(live[r].src, live[r].tokens + [t], live[r].new + [t], live[r].start) for r, t in zip(rows, new_tokens)]
        self.scores = torch.tensor(new_scores, device=self.device).view(len(survivors), k)  # (A', k)
        tokens = torch.tensor(new_tokens, dtype=torch.long, device=self.device)  # (A'·k,)
        return new_live, rows, tokens

    def _finish(self, src: int, total: float, hyp: list[int]) -> None:
        self.finished[src].append((total / len(hyp) ** self.lp, hyp))

    def results(self) -> list[list[int]]:
        return [max(f, key=lambda x: x[0])[1] if f else [] for f in self.finished]
