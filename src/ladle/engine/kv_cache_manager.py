"""KVCacheManager: the block pool's bookkeeping (which blocks are free, who holds which, prefix reuse).

Full blocks are keyed by a hash chained over their token ids (a block's key covers every token before it),
so two requests with the same prefix share the same blocks. A block whose last holder finishes keeps its
contents and its key in the free queue; it is reused for a hit until it is taken for new tokens, oldest
first (LRU). The tensors themselves live in the model runner; this class only hands out block ids.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from ladle.engine.request import Request


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of those, tokens found cached


def hash_block(parent: bytes | None, token_ids: list[int]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    if parent is not None:
        h.update(parent)
    h.update(b"".join(t.to_bytes(4, "little") for t in token_ids))
    return h.digest()


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block; raise the memory budget")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, int] = {}
        self.request_hashes: dict[str, list[bytes]] = {}
        # Per request: how many of its leading blocks cache_full_blocks has settled, and the indices among
        # them it could not register because another block held the same key (retried each call). Without
        # this every step re-walked every full block of every request: O(context) a step.
        self.settled: dict[str, tuple[int, list[int]]] = {}
        self.stats = PrefixCacheStats()

    # -- queries ---------------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by running requests (cached-but-free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache ----------------------------------------------------------------------------------
    def find_cached_prefix(self, request: Request) -> list[int]:
        """Block ids holding the longest cached prefix of the request's tokens. At least one token is left
        to compute, since the last prompt position must run through the model to give logits."""
        if not self.enable_prefix_caching or request.params.prompt_logprobs is not None:
            return []
        tokens = request.all_token_ids
        max_blocks = (len(tokens) - 1) // self.block_size
        hashes = self._hashes_for(request, max_blocks)
        found: list[int] = []
        for h in hashes[:max_blocks]:
            block = self.cached.get(h)
            if block is None:
                break
            found.append(block)
        self.stats.queries += request.num_tokens
        self.stats.hits += len(found) * self.block_size
        return found

    def _hashes_for(self, request: Request, num_blocks: int) -> list[bytes]:
        hashes = self.request_hashes.setdefault(request.request_id, [])
        tokens, size = request.all_token_ids, self.block_size
        while len(hashes) < num_blocks:
            i = len(hashes)
            hashes.append(hash_block(hashes[-1] if hashes else None, tokens[i * size : (i + 1) * size]))
        return hashes

    def cache_full_blocks(self, request: Request) -> None:
        """Registers the request's blocks that are now full of computed tokens under their prefix keys."""
        if not self.enable_prefix_caching:
            return
        num_full = min(request.num_computed_tokens // self.block_size, len(request.block_ids))
        done, duplicates = self.settled.get(request.request_id, (0, []))
        if num_full <= done and not duplicates:
            return
        hashes = self._hashes_for(request, num_full)
        still: list[int] = []
        for i in duplicates + list(range(done, num_full)):
            block = request.block_ids[i]
            if self.block_hash[block] is None:
                if hashes[i] in self.cached:
                    still.append(i)
                else:
                    self.block_hash[block] = hashes[i]
                    self.cached[hashes[i]] = block
        self.settled[request.request_id] = (max(done, num_full), still)

    # -- allocation ------------------------------------------------------------------------------------
    def allocate(self, request: Request, num_new_tokens: int, cached_blocks: list[int] | None = None) -> bool:
        """Gives the request blocks for `num_new_tokens` more tokens (after any cached prefix blocks, which
        it starts holding). Returns False, changing nothing, when the pool can't supply them."""
        if not cached_blocks:  # most decode steps: the new token fits in the last block held
            held = len(request.block_ids)
            if request.num_computed_tokens + num_new_tokens <= held * self.block_size:
                return True
        cached_blocks = cached_blocks or []
        reclaimed = sum(1 for b in cached_blocks if self.ref_counts[b] == 0)
        held = len(request.block_ids) + len(cached_blocks)
        computed = request.num_computed_tokens + len(cached_blocks) * self.block_size
        need = self.blocks_needed(computed + num_new_tokens) - held
        if need > self.num_free_blocks - reclaimed:
            return False
        for block in cached_blocks:
            if self.ref_counts[block] == 0:
                del self.free_queue[block]
            self.ref_counts[block] += 1
        request.block_ids.extend(cached_blocks)
        for _ in range(max(need, 0)):
            block, _ = self.free_queue.popitem(last=False)
            old = self.block_hash[block]
            if old is not None:  # evict: this block's old contents are about to be overwritten
                del self.cached[old]
                self.block_hash[block] = None
            self.ref_counts[block] = 1
            request.block_ids.append(block)
        return True

    def free(self, request: Request) -> None:
        """Releases the request's blocks. Tail blocks go to the queue first, so they are evicted before the
        shared prefix blocks that other requests are likelier to hit."""
        for block in reversed(request.block_ids):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_queue[block] = None
        request.block_ids = []
        self.request_hashes.pop(request.request_id, None)
        self.settled.pop(request.request_id, None)

    def reset_prefix_cache(self) -> None:
        for h, block in list(self.cached.items()):
            if self.ref_counts[block] == 0:
                del self.cached[h]
                self.block_hash[block] = None
