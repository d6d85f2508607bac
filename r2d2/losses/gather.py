"""Cross-rank gathering for the contrastive objectives.

Why: GCPR and TgD compare every local sample with the *global* batch (all ranks). The
columns must carry gradient back to the rank that produced them, otherwise a rank learns
only from its own rows and the loss is not equivalent to the single-process global loss.
`torch.distributed.nn.functional.all_gather` is the autograd-aware collective made for
this: its backward sums, over ranks, the gradient each rank computed for a slice and
hands it to the slice's owner. Torch 2.13 deprecates it (a FutureWarning per call) in
favour of `torch.distributed._functional_collectives.all_gather_single`, which has the
same autograd semantics (backward = reduce-scatter with sum, also on gloo); we use that
when it exists and fall back to the older function otherwise.

Gradient convention (shared by every loss in `r2d2.losses`): each rank returns the mean
over its *local* rows (scaled by `rank_scale` when local sizes differ). The gradient that
reaches rank r's features is then `world_size * dL_global/dx_r`, and DistributedDataParallel
(which averages gradients over ranks) turns it into exactly the global-loss gradient.

Local batches may differ in size (a short last batch): tensors are padded to the largest
local size for the collective and the padding is sliced off again.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

try:  # torch >= 2.6: the autograd-aware functional collective (backward = reduce-scatter sum)
    from torch.distributed._functional_collectives import all_gather_single as _ag_single
except ImportError:  # pragma: no cover - older torch
    _ag_single = None


def world_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is unavailable or not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's local size along dim 0 (one tiny collective; host ints afterwards)."""
    _, world = world_info()
    if world == 1:
        return [n]
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(sizes, local)
    return [int(s) for s in torch.cat(sizes).tolist()]


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    if x.shape[0] == rows:
        return x.contiguous()
    pad = x.new_zeros((rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad], dim=0)


def _unpad(parts: list[Tensor] | tuple[Tensor, ...], sizes: list[int]) -> Tensor:
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0)


def all_gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate `x` from all ranks along dim 0, in rank order, keeping the autograd graph.

    The backward of the gathered tensor sums the gradient every rank computed for a slice
    and returns it to that slice's owner (see the module docstring for the convention).
    Identity when world_size == 1. `sizes` (from `gather_sizes`) saves the size
    collective when several tensors of the same batch are gathered.
    """
    _, world = world_info()
    if world == 1:
        return x
    sizes = sizes if sizes is not None else gather_sizes(x.shape[0], x.device)
    padded = _pad_rows(x, max(sizes))
    if _ag_single is not None:
        parts = _ag_single(padded, 0, dist.group.WORLD).chunk(world, dim=0)
    else:  # pragma: no cover - older torch
        import torch.distributed.nn.functional as dist_fn

        parts = dist_fn.all_gather(padded)
    return _unpad(parts, sizes)


@torch.no_grad()
def all_gather_no_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate `x` from all ranks along dim 0, in rank order, without gradient."""
    _, world = world_info()
    x = x.detach()
    if world == 1:
        return x
    sizes = sizes if sizes is not None else gather_sizes(x.shape[0], x.device)
    padded = _pad_rows(x, max(sizes))
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return _unpad(parts, sizes)


def rank_scale(local_rows: int, global_rows: int) -> float:
    """Factor that turns a rank's local-row mean into its share of the global mean.

    With DDP averaging over `world` ranks, rank r must return
    `local_mean * local_rows * world / global_rows` so that the average of the ranks'
    losses (and gradients) equals the global mean. It is 1.0 when all local batches
    have the same size, which is the usual case.
    """
    _, world = world_info()
    if global_rows == 0:
        return 1.0
    return local_rows * world / global_rows
