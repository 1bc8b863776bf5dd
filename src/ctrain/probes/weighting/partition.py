"""PartitionSHAP as ``shap.PartitionExplainer`` with ``shap.maskers.Text`` computes it, many coalitions per forward pass.

``owen_values`` in ``ctrain.probes.weighting.shapley`` calls the ``shap`` library: one sentence at
a time, the model called on a few hundred masked strings in batches that grow 2, 8, 32, 128,
256 as the recursion descends, each batch padded and tokenised on its own, a Python loop
around every mask. ``batched_owen_values`` runs the same recursion for many sentences in
lockstep and evaluates the masked strings of all of them in one round of forward passes,
grouped by token length (no padding), each distinct string once.

What is the same as the library (shap 0.51, ``PartitionExplainer.owen`` with its call
defaults: ``fixed_context=None``, ``max_evals`` 500 of which 2 go to the empty and the full
coalition, ``batch_size="auto"``, which is the Text masker's ``default_batch_size``; another
``batch_size`` can be given, as to the library):

- the players, their text segments and the partition tree: taken from ``shap.maskers.Text``
  itself (``token_segments`` and ``clustering``), with ``mask_token`` the tokenizer's MASK and
  ``collapse_mask_token=False``, as ``owen_values`` builds it;
- the masked strings: the masker's rule (kept prefix/suffix tokens, segments equal to the
  separator token never masked, each masked token replaced by `` MASK``, whitespace runs
  collapsed, stripped), tested against the masker on random masks;
- the recursion: a max-heap on ``max |f(child) - f(context)| * weight``, a round pops up to
  ``batch_size`` masks (two per internal node; leaves are credited as they are popped) while
  ``evaluations + masks < max_evals``, and once ``max_evals`` is reached what is left in the
  heap is credited to its nodes; then the interaction credit is lowered onto the leaves in
  proportion to cluster sizes (``lower_credit``).

What differs, and why the values still agree to float rounding:

- the model sees the same strings, tokenised the same way, but in other batches (no
  padding instead of the library's per-call padding), so an output can differ in the last
  float32 bits;
- exact ties of the heap priority are broken by a draw from a generator seeded per sentence
  (``seeds``); the library draws from NumPy's global RNG, so where the budget runs out its
  own values of a long sentence change from run to run (``tie_breaks="global"`` reproduces
  them after the same ``np.random.seed``). Outside the budget-limited case the pop order
  changes no value, only the order of float64 additions;
- identical masked strings of one call are evaluated once (the library re-evaluates them,
  except for consecutive masks that differ only in always-kept positions).
"""

from __future__ import annotations

import functools
import heapq
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ctrain.models.encoder import attribution_mode
from ctrain.runtime import check_choice

_SPACES = re.compile(r"[\s]+")
TieBreaks = Literal["seeded", "global"]
TIE_BREAKS: tuple[str, ...] = ("seeded", "global")


@functools.lru_cache(maxsize=8)
def text_masker(tokenizer: PreTrainedTokenizerBase):
    """The ``shap.maskers.Text`` that ``owen_values`` uses: MASK as the absent value, one MASK per masked token.

    Built once per tokenizer (building it runs the tokenizer to find the kept prefix and suffix), then shared by every sentence of
    every probe: its only state is the last sentence's tokens, cached under that sentence."""
    import shap

    if tokenizer.mask_token is None:
        raise ValueError("SHAP needs a tokenizer with a mask token (the absent value): use another model or method ig")
    return shap.maskers.Text(tokenizer, mask_token=tokenizer.mask_token, collapse_mask_token=False)


def library_batch_size(tokenizer: PreTrainedTokenizerBase) -> int:
    """The coalitions per round ``PartitionExplainer`` evaluates with ``batch_size="auto"``: the Text masker's default
    (5 in shap 0.51), read from the installed library. Where a long sentence exhausts ``max_evals`` it decides which
    partition nodes get expanded, so it changes the values."""
    return text_masker(tokenizer).default_batch_size


@dataclass
class TextGame:
    """One sentence as ``shap.maskers.Text`` cuts it: players (all tokens, specials included), segments, tree."""

    sentence: str
    segments: list[str]
    clustering: np.ndarray  # (M - 1, 4) scipy-style linkage: left, right, distance, size
    kept: int  # bitmask of the positions the masker always keeps (prefix and suffix tokens)
    separators: int  # bitmask of the segments equal to the separator token (never masked)
    mask_token: str
    collapse: bool
    sentencepiece: bool

    @property
    def players(self) -> int:
        return len(self.segments)

    @classmethod
    def from_masker(cls, masker, sentence: str) -> TextGame:
        from shap.utils import safe_isinstance
        from shap.utils.transformers import SENTENCEPIECE_TOKENIZERS

        segments, _ = masker.token_segments(sentence)
        segments = [str(s) for s in segments]
        clustering = np.asarray(masker.clustering(sentence), dtype=np.float64)
        players = len(segments)
        kept = 0
        for i in range(min(masker.keep_prefix, players)):
            kept |= 1 << i
        for i in range(max(players - masker.keep_suffix, 0), players):
            kept |= 1 << i
        sep = getattr(masker.tokenizer, "sep_token", None)
        separators = sum(1 << i for i, s in enumerate(segments) if sep is not None and s == sep)
        return cls(
            sentence, segments, clustering, kept, separators, masker.mask_token, bool(masker.collapse_mask_token),
            safe_isinstance(masker.tokenizer, SENTENCEPIECE_TOKENIZERS),
        )  # fmt: skip

    def masked_string(self, present: int) -> str:
        """The string ``shap.maskers.Text`` builds for the coalition ``present`` (bit ``i`` = token ``i`` kept)."""
        present |= self.kept | self.separators
        parts, previous_masked = [], False
        for i, segment in enumerate(self.segments):
            if present >> i & 1:
                parts.append(segment)
                previous_masked = False
            elif not self.collapse or not previous_masked:
                parts.append(" " + self.mask_token)
                previous_masked = True
        out = "".join(parts)
        if self.sentencepiece:
            out = out.replace("▁", " ")
        return _SPACES.sub(" ", out).strip()

    def node_masks(self) -> list[int]:
        """Bitmask of the players under every node of the tree (leaves ``0..M-1``, then the merges)."""
        masks = [1 << i for i in range(self.players)]
        for left, right in self.clustering[:, :2].astype(int):
            masks.append(masks[left] | masks[right])
        return masks


class _Recursion:
    """``PartitionExplainer.owen`` (``fixed_context=None``) for one sentence, driven one batch at a time."""

    def __init__(self, game: TextGame, max_evals: int, batch_size: int, random) -> None:
        self.game = game
        self.players = game.players
        self.masks = game.node_masks()
        self.clustering = game.clustering
        self.max_evals = max_evals - 2  # explain_row spends two evaluations on f00 and f11
        self.batch_size = batch_size
        self.random = random  # anything with NumPy's legacy ``randn``: the tie-breaking draws, one per push
        self.heap: list = []
        self.counter = 0
        self.eval_count = 0
        self.dvalues: np.ndarray | None = None
        self.pending: list[tuple] = []

    def start(self, f00: np.ndarray, f11: np.ndarray) -> None:
        self.dvalues = np.zeros((2 * self.clustering.shape[0] + 1, len(f00)))
        root = len(self.dvalues) - 1
        self.heap = [(0, 0, -1, (0, f00, f11, root, 1.0))]

    def _push(self, priorities: np.ndarray, items: list[tuple]) -> None:
        draws = self.random.randn(len(items))
        for priority, draw, item in zip(priorities.tolist(), draws.tolist(), items):
            heapq.heappush(self.heap, (priority, draw, self.counter, item))
            self.counter += 1

    def next_masks(self) -> list[int]:
        """Pop the next batch of work; return its coalitions (empty when the recursion has finished)."""
        dvalues, players, masks, clustering = self.dvalues, self.players, self.masks, self.clustering
        while self.heap:
            if self.eval_count >= self.max_evals:  # out of budget: what is left stays on its nodes
                while self.heap:
                    _, f00, f11, ind, weight = heapq.heappop(self.heap)[3]
                    dvalues[ind] += (f11 - f00) * weight
                break
            batch, coalitions = [], []
            while self.heap and len(coalitions) < self.batch_size and self.eval_count + len(coalitions) < self.max_evals:
                m00, f00, f11, ind, weight = heapq.heappop(self.heap)[3]
                if ind < players or clustering[ind - players, 2] < 0:  # a leaf (or an unsplittable cluster)
                    dvalues[ind] += (f11 - f00) * weight
                    continue
                left, right = int(clustering[ind - players, 0]), int(clustering[ind - players, 1])
                m10, m01 = m00 | masks[left], m00 | masks[right]
                batch.append((m00, m10, m01, f00, f11, left, right, weight))
                coalitions += [m10, m01]
            if batch:
                self.pending = batch
                return coalitions
        return []

    def take(self, outputs: np.ndarray) -> None:
        """The model's outputs (2 per node, in the order ``next_masks`` gave them): push the four children of each node."""
        batch, self.pending = self.pending, []
        self.eval_count += 2 * len(batch)
        f10, f01 = outputs[0::2], outputs[1::2]
        f00 = np.stack([b[3] for b in batch])
        f11 = np.stack([b[4] for b in batch])
        weights = np.array([b[7] / 2 for b in batch])
        priorities = np.stack(
            [
                -np.abs(f10 - f00).max(1) * weights,
                -np.abs(f01 - f00).max(1) * weights,
                -np.abs(f11 - f01).max(1) * weights,
                -np.abs(f11 - f10).max(1) * weights,
            ],
            axis=1,
        ).reshape(-1)
        items = []
        for i, (m00, m10, m01, _, _, left, right, weight) in enumerate(batch):
            new_weight = weight / 2
            items += [
                (m00, f00[i], f10[i], left, new_weight),
                (m00, f00[i], f01[i], right, new_weight),
                (m01, f01[i], f11[i], left, new_weight),
                (m10, f10[i], f11[i], right, new_weight),
            ]
        self._push(priorities, items)

    def values(self) -> np.ndarray:
        """Owen values (M, d): the node credits lowered onto the leaves in proportion to cluster sizes."""
        values = self.dvalues.copy()
        players, clustering = self.players, self.clustering
        for node in range(len(values) - 1, players - 1, -1):  # parents before children (merge order)
            left, right, size = (int(v) for v in clustering[node - players, [0, 1, 3]])
            left_size = int(clustering[left - players, 3]) if left >= players else 1
            right_size = int(clustering[right - players, 3]) if right >= players else 1
            values[left] += values[node] * left_size / size
            values[right] += values[node] * right_size / size
        return values[:players]


def batched_owen_values(
    value_function: Callable[[list[str]], np.ndarray],
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[str],
    max_evals: int = 500,
    batch_size: int | None = None,
    *,
    seeds: Sequence[int] | None = None,
    tie_breaks: TieBreaks = "seeded",
) -> list[np.ndarray]:
    """PartitionSHAP values (M, d) of every sentence, as ``owen_values`` computes them one by one.

    ``value_function`` maps a list of distinct masked strings to their outputs (C, d); it
    is called once per round of the recursions of all sentences. ``batch_size`` is the
    library's: at most that many coalitions per sentence per round (it decides which nodes
    a budget-limited recursion expands); None takes the library's default (``library_batch_size``).

    Exact ties of the heap priority are common: a node holding an always-kept special token
    pushes two copies of its sibling with the same priority. Where the budget runs out they
    decide which nodes get expanded, so the library's values of long sentences depend on
    NumPy's global RNG. ``tie_breaks="seeded"`` (default) draws the tie-breakers of sentence
    ``b`` from ``RandomState(seeds[b])``: deterministic. ``"global"`` draws them from
    ``np.random`` in the library's order (one sentence after the other, no batching across
    sentences), so that after the same ``np.random.seed`` the values equal the library's bit
    for bit up to the model's float rounding.
    """
    check_choice(tie_breaks, TIE_BREAKS, "tie_breaks")
    if tie_breaks == "global" and len(sentences) > 1:
        return [batched_owen_values(value_function, tokenizer, [s], max_evals, batch_size, seeds=None, tie_breaks="global")[0] for s in sentences]
    masker = text_masker(tokenizer)
    batch_size = masker.default_batch_size if batch_size is None else batch_size
    seeds = list(seeds) if seeds is not None else list(range(len(sentences)))
    games = [TextGame.from_masker(masker, s) for s in sentences]
    randoms = [np.random if tie_breaks == "global" else np.random.RandomState(seed) for seed in seeds]
    runs = [_Recursion(g, max_evals, batch_size, random) for g, random in zip(games, randoms)]
    cache: dict[str, np.ndarray] = {}

    def evaluate(requests: list[tuple[TextGame, list[int]]]) -> list[np.ndarray]:
        strings = [[game.masked_string(c) for c in coalitions] for game, coalitions in requests]
        new = list(dict.fromkeys(s for row in strings for s in row if s not in cache))
        if new:
            outputs = np.asarray(value_function(new), dtype=np.float64)
            cache.update(zip(new, outputs))
        return [np.stack([cache[s] for s in row]) for row in strings]

    if not runs:
        return []
    everything = evaluate([(g, [0, (1 << g.players) - 1]) for g in games])
    for run, ends in zip(runs, everything):
        run.start(ends[0], ends[1])
    active = runs
    while active:
        requests = [(run, run.next_masks()) for run in active]
        active = [run for run, coalitions in requests if coalitions]
        if not active:
            break
        outputs = evaluate([(run.game, coalitions) for run, coalitions in requests if coalitions])
        for run, output in zip(active, outputs):
            run.take(output)
    return [run.values() for run in runs]


def length_grouped_encoder(encoder, max_length: int | None = 128, max_tokens: int = 16384) -> Callable[[list[str]], np.ndarray]:
    """``strings -> f(strings)`` (C, d) float64: tokenised without padding, forward passes over equal-length groups.

    The same tokenisation as ``SentenceEncoder.encode`` (truncation to ``max_length``, no
    token type ids) and the same model call, in eval mode, fp32, without gradients; up to
    ``max_tokens`` tokens per forward pass.
    """
    def value(strings: list[str]) -> np.ndarray:
        ids = encoder.tokenizer(list(strings), truncation=max_length is not None, max_length=max_length)["input_ids"]
        by_length: dict[int, list[int]] = {}
        for row, tokens in enumerate(ids):
            by_length.setdefault(len(tokens), []).append(row)
        out = np.empty((len(strings), encoder.embedding_size), dtype=np.float64)
        with attribution_mode(encoder) as device, torch.no_grad():
            for length, rows in sorted(by_length.items()):
                step = max(1, max_tokens // length)
                for start in range(0, len(rows), step):
                    chunk = rows[start : start + step]
                    batch = torch.tensor([ids[r] for r in chunk], device=device)
                    f = encoder(input_ids=batch, attention_mask=torch.ones_like(batch))
                    out[chunk] = f.double().cpu().numpy()
        return out

    return value
