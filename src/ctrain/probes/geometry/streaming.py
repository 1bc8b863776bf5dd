"""Streams the probe corpus through the model and folds each batch into `LayerSums`.

Hidden states are never kept and never turned into unit vectors: per batch and layer, one
norm, one bmm and one sparse (CSR) product give every sum the metrics need. Within a batch
this runs in the model's float32; sums across batches are float64. The random draws
(anisotropy and informativity samples) are made before streaming and arrive in the `Plan`, so
results do not depend on batching.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ctrain.probes.geometry.metrics import (
    ACCUMULATE,
    LayerSums,
    Moments,
    TypeSelection,
    intra_similarity,
)

if TYPE_CHECKING:
    from ctrain.models.encoder import SentenceEncoder


class Plan(NamedTuple):
    """Tokenised corpus in processing order, batches, and the up-front random draws."""

    order: list[int]  # corpus index of each sentence in processing order
    ids: Tensor  # token ids of all sentences, concatenated in processing order (no padding)
    keep: Tensor  # token-set mask of the same tokens
    lengths: Tensor  # (S,) tokens per sentence, processing order (longest first)
    token_start: Tensor  # (S + 1,) index in `ids` of each sentence's first token
    batches: list[tuple[int, int]]  # sentence ranges in processing order
    occurrence_start: Tensor  # (S + 1,) first occurrence (token-set position) of each sentence
    selection: TypeSelection
    anisotropy_draws: Tensor  # (L + 1, R, M) occurrence indices
    informativity_draws: Tensor  # (K,) occurrence indices


class BatchIndex(NamedTuple):
    """Which of a batch's occurrences feed which sums, sorted as its CSR rows need them (occurrence indices)."""

    first: int  # the batch's first occurrence
    summed: Tensor  # per layer, the occurrences its type and resample sums take, in CSR row order, concatenated
    per_layer: list[int]  # how many of `summed` belong to each layer
    row_starts: Tensor  # (L+1, present types + R + 1) CSR row pointers
    present_types: Tensor  # the type slots whose sums come first, in that order
    info_occurrences: Tensor  # informativity draws on this batch
    info_columns: Tensor  # their places in the informativity sample


def batch_indices(plan: Plan, layers: int) -> list[BatchIndex]:
    """Split the selection and the random draws by batch, each group pre-sorted, with a few global sorts."""
    bounds = plan.occurrence_start[[begin for begin, _ in plan.batches] + [len(plan.order)]]
    batch_count = len(plan.batches)

    def batch_of(occurrences: Tensor) -> Tensor:
        return torch.searchsorted(bounds, occurrences, right=True) - 1

    def per_batch(values: Tensor, batch: Tensor) -> list[Tensor]:
        return list(values.split(torch.bincount(batch, minlength=batch_count).tolist()))

    types = max(plan.selection.type_ids.numel(), 1)  # (no qualifying type: nothing below is used)
    used = (plan.selection.slot >= 0).nonzero().squeeze(1)
    slot = plan.selection.slot[used]
    order = (batch_of(used) * types + slot).argsort(stable=True)  # by batch, then type, then occurrence
    used, slot = used[order], slot[order]
    key = batch_of(used) * types + slot
    groups, group_counts = torch.unique_consecutive(key, return_counts=True)
    group_batch = groups // types

    resamples, sample = plan.anisotropy_draws.shape[1:]
    draws = plan.anisotropy_draws.reshape(-1)
    rows = torch.arange(draws.numel()) // sample  # layer * R + resample
    key = batch_of(draws) * (layers * resamples) + rows
    order = (key * (int(bounds[-1]) + 1) + draws).argsort()  # by batch, (layer, resample), occurrence
    draws, key = draws[order], key[order]
    draw_counts = torch.bincount(key, minlength=batch_count * layers * resamples).view(batch_count, layers, resamples)

    info, info_columns = plan.informativity_draws.sort()
    info_batch = batch_of(info)
    indices = []
    for batch, (type_occurrences, present, counts, batch_draws, info_occurrences, columns) in enumerate(
        zip(
            per_batch(used, batch_of(used)),
            per_batch(groups % types, group_batch),
            per_batch(group_counts, group_batch),
            per_batch(draws, batch_of(draws)),
            per_batch(info, info_batch),
            per_batch(info_columns, info_batch),
        )
    ):
        layer_draws = batch_draws.split(draw_counts[batch].sum(1).tolist())
        summed = torch.cat([torch.cat([type_occurrences, layer]) for layer in layer_draws])
        per_layer = [type_occurrences.numel() + layer.numel() for layer in layer_draws]
        row_starts = F.pad(torch.cat([counts.expand(layers, -1), draw_counts[batch]], 1).cumsum(1), (1, 0))
        indices.append(BatchIndex(int(bounds[batch]), summed, per_layer, row_starts, present, info_occurrences, columns))
    return indices


class Accumulators:
    """Per-layer running sums over streamed batches; everything the metrics need, nothing per token."""

    def __init__(self, plan: Plan, layers: int, hidden: int, device: torch.device, unit_squares: bool) -> None:
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, hidden, dtype=ACCUMULATE, device=device)

        self.selection = plan.selection
        self.unit_sum = zeros(layers)
        self.unit_square_sum = zeros(layers) if unit_squares else None
        # (types, L+1, d) and (resamples, L+1, d): a batch adds whole rows of every layer at once
        self.type_sums = zeros(plan.selection.type_ids.numel(), layers)
        self.anisotropy_sums = zeros(plan.anisotropy_draws.shape[1], layers)
        self.informativity = zeros(layers, plan.informativity_draws.numel()).float()  # the model's own values
        self.norms = Moments(*(torch.zeros(layers, dtype=ACCUMULATE, device=device) for _ in range(3)))
        self.intra_sum = torch.zeros(layers, dtype=ACCUMULATE, device=device)
        self.intra_sentences = 0
        self.sample = plan.anisotropy_draws.shape[2]

    def add(self, hidden_states: Sequence[Tensor], keep: Tensor, index: BatchIndex) -> None:
        """Fold one batch: padded states (B, len, d) per layer and the token-set mask (B, len).

        Per layer, one bmm with weights keep/||h|| and keep gives each sentence's sums of unit and
        raw vectors, and one sparse product with values 1/||h|| gives the unit sums of each type
        present and of each anisotropy resample; with `unit_squares`, one more product with
        weights keep/||h||^2 gives the per-dimension sum of squared unit components.
        """
        position = keep.flatten().nonzero().squeeze(1)  # padded position of each occurrence
        if position.numel() == 0:  # e.g. sentences of special tokens only, with specials excluded
            return
        device = keep.device
        columns = keep.numel()
        hidden = self.anisotropy_sums.shape[-1]
        present_types = index.present_types.to(device)
        summed = position[index.summed.to(device) - index.first].split(index.per_layer)
        row_starts = index.row_starts.to(device)
        sum_rows = row_starts.shape[1] - 1

        weights = keep.float()
        scaled = torch.stack([weights, weights], 1)  # (B, 2, len): row 0 becomes keep/||h|| per layer
        sentence_sums, token_norms, set_sums, square_sums = [], [], [], []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            for layer, states in enumerate(hidden_states):
                states = states.float()
                norms = states.norm(dim=-1)
                inverse = torch.div(weights, norms.clamp_min(1e-12), out=scaled[:, 0])  # a zero vector stays zero
                sentence_sums.append(torch.bmm(scaled, states))  # (B, 2, d): sums of unit and of raw vectors
                token_norms.append(norms)
                rows, scale = states.reshape(columns, hidden), inverse.flatten()
                if self.unit_square_sum is not None:
                    square_sums.append((scale * scale) @ rows.square())
                to_sums = torch.sparse_csr_tensor(
                    row_starts[layer], summed[layer], scale[summed[layer]], (sum_rows, columns), check_invariants=False
                )
                set_sums.append(to_sums @ rows)  # (present types + resamples, d)
        set_sums = torch.stack(set_sums, 1).to(ACCUMULATE)  # (present types + resamples, L+1, d)
        self.type_sums.index_add_(0, present_types, set_sums[: present_types.numel()])
        self.anisotropy_sums += set_sums[present_types.numel() :]
        if self.unit_square_sum is not None:
            self.unit_square_sum += torch.stack(square_sums).to(ACCUMULATE)

        sentence_sums = torch.stack(sentence_sums)  # (L+1, B, 2, d)
        unit_sums, vector_sums = sentence_sums[:, :, 0], sentence_sums[:, :, 1]
        self.unit_sum += unit_sums.sum(1).to(ACCUMULATE)
        counts = keep.sum(1)
        present = counts > 0
        intra = intra_similarity(unit_sums, vector_sums, counts)  # per sentence, float32 is enough
        self.intra_sum += intra[:, present].to(ACCUMULATE).sum(-1)
        self.intra_sentences += int(present.sum())
        self.norms = self.norms.merge(Moments.of(torch.stack(token_norms).flatten(1)[:, position]))
        info_position = position[index.info_occurrences.to(device) - index.first]
        picked = torch.stack([states.reshape(columns, hidden)[info_position] for states in hidden_states])
        self.informativity[:, index.info_columns.to(device)] = picked.float()

    def sums(self) -> LayerSums:
        """The accumulated statistics, layers first."""
        return LayerSums(
            unit_sum=self.unit_sum,
            unit_square_sum=self.unit_square_sum,
            type_unit_sums=self.type_sums.transpose(0, 1),
            type_counts=self.selection.counts.to(self.type_sums.device),
            anisotropy_unit_sums=self.anisotropy_sums.transpose(0, 1),
            anisotropy_sample=self.sample,
            intra_sum=self.intra_sum,
            sentences=self.intra_sentences,
            norms=self.norms,
            informativity_sample=self.informativity,
        )


def stream(
    encoder: SentenceEncoder, plan: Plan, unit_squares: bool, embeddings: bool
) -> tuple[LayerSums, Tensor | None]:
    """Run the model batch by batch; the sums, and with `embeddings` the sentences' f(X) in processing order."""
    device = next(encoder.parameters()).device
    layers = encoder.num_layers + 1
    accumulators = Accumulators(plan, layers, encoder.hidden_size, device, unit_squares)
    pooled = []
    pad = encoder.tokenizer.pad_token_id
    for (begin, end), index in zip(plan.batches, batch_indices(plan, layers)):
        lengths = plan.lengths[begin:end]
        tokens = slice(int(plan.token_start[begin]), int(plan.token_start[end]))
        attended = torch.arange(int(lengths[0])) < lengths.unsqueeze(1)  # longest sentence first
        input_ids = torch.full(attended.shape, pad, dtype=plan.ids.dtype).masked_scatter_(attended, plan.ids[tokens])
        keep = torch.zeros_like(attended).masked_scatter_(attended, plan.keep[tokens])
        attention_mask = attended.long().to(device)
        output = encoder.token_states(input_ids=input_ids.to(device), attention_mask=attention_mask, output_hidden_states=True)
        accumulators.add(output.hidden_states, keep.to(device), index)
        if embeddings:
            pooled.append(encoder.pooler(output.last_hidden_state, attention_mask).float())
    return accumulators.sums(), torch.cat(pooled) if embeddings else None
