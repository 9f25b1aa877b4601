"""Tensor-parallel layers. Each holds one rank's slice of a weight and says which slice (`shard_for`), so
the loader reads only that part of the checkpoint.

- ColumnParallelLinear: a block of output rows (q/k/v, gate/up); its output stays split across ranks.
- RowParallelLinear: the matching block of input columns (o_proj, down_proj); partial sums are all-reduced.
- VocabParallelEmbedding / ParallelLMHead: a block of vocabulary rows; embeddings are all-reduced (each token
  is found on one rank), logits are gathered to rank 0, the one that samples.

A shard is (dim, start, end, size): rows or columns start:end of the full weight, zero-padded to `size`
(the vocabulary is padded to a multiple of the group size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ladle.distributed.group import TPGroup
from ladle.layers.linear import Linear, VocabEmbedding

Shard = tuple[int, int, int, int]


class ColumnParallelLinear(Linear):
    def __init__(self, in_features: int, rows: tuple[int, int], bias: bool) -> None:
        super().__init__(in_features, rows[1] - rows[0], bias=bias)
        self.rows = rows

    def shard_for(self, param: str) -> Shard | None:
        start, end = self.rows
        return (0, start, end, end - start)  # weight rows, and the bias entries of those rows


class RowParallelLinear(Linear):
    def __init__(self, cols: tuple[int, int], out_features: int, bias: bool, group: TPGroup) -> None:
        super().__init__(cols[1] - cols[0], out_features, bias=bias)
        self.cols = cols
        self.group = group

    def shard_for(self, param: str) -> Shard | None:
        if param == "bias":
            return None  # added once, after the reduction
        start, end = self.cols
        return (1, start, end, end - start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized is not None:
            out = self.quantized.linear(x)
        else:
            out = F.linear(x, self.weight)
        out = self.group.all_reduce(out)
        return out + self.bias if self.bias is not None else out


def vocab_range(vocab_size: int, group: TPGroup) -> tuple[int, int, int]:
    """(start, end, padded shard size) of this rank's vocabulary rows; the last rank's may be short."""
    size = -(-vocab_size // group.world_size)
    start = min(group.rank * size, vocab_size)
    return start, min(start + size, vocab_size), size


class VocabParallelEmbedding(VocabEmbedding):
    def __init__(self, vocab_size: int, embedding_dim: int, group: TPGroup) -> None:
        self.vocab_start, self.vocab_end, shard = vocab_range(vocab_size, group)
        super().__init__(shard, embedding_dim)
        self.group = group

    def shard_for(self, param: str) -> Shard | None:
        return (0, self.vocab_start, self.vocab_end, self.num_embeddings)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mine = (ids >= self.vocab_start) & (ids < self.vocab_end)
        local = torch.where(mine, ids - self.vocab_start, 0)
        out = (
            self.quantized.embedding(local) if self.quantized is not None else F.embedding(local, self.weight)
        )
        out = out * mine.unsqueeze(-1).to(out.dtype)
        return self.group.all_reduce(out)


def _gather_logits(local: torch.Tensor, vocab_size: int, group: TPGroup) -> torch.Tensor:
    parts = group.gather_to_first(local)
    if parts is None:
        # Only rank 0 samples; the others get an empty row per token so shapes downstream still line up.
        return local.new_empty(local.shape[0], 0)
    return torch.cat(parts, dim=-1)[..., :vocab_size]


class ParallelLMHead(Linear):
    """An untied output projection: this rank's vocabulary rows."""

    def __init__(self, hidden_size: int, vocab_size: int, group: TPGroup) -> None:
        self.vocab_start, self.vocab_end, shard = vocab_range(vocab_size, group)
        super().__init__(hidden_size, shard)
        self.vocab_size = vocab_size
        self.group = group

    def shard_for(self, param: str) -> Shard | None:
        return (0, self.vocab_start, self.vocab_end, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _gather_logits(super().forward(x), self.vocab_size, self.group)


class TiedParallelLMHead(nn.Module):
    """The output projection that reuses this rank's slice of the token embedding."""

    def __init__(self, embedding: VocabParallelEmbedding, vocab_size: int) -> None:
        super().__init__()
        self._embedding = [embedding]  # a list, so the embedding isn't registered (and loaded) twice
        self.vocab_size = vocab_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self._embedding[0]
        local = emb.quantized.linear(x) if emb.quantized is not None else F.linear(x, emb.weight)
        return _gather_logits(local, self.vocab_size, emb.group)
