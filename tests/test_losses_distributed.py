"""Two CPU ranks (gloo) reproduce the single-process global losses and gradients.

Convention checked here (see `r2d2.losses.gather`): each rank returns the mean over its
local rows (times `rank_scale`, 1.0 for equal local batches), and the gradient that
reaches rank r's own features is `world_size * dL_global/dx_r`, because the all-gather
backward sums every rank's contribution to that slice. DDP then averages over ranks
(divides by world_size), which gives exactly the global gradient. So:
    mean over ranks of the losses        == global loss
    cat(rank grads) / world_size          == global grads
"""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from r2d2.losses import FeatureQueue, GCPRLoss, TgDLoss

WORLD = 2
TEMP = 0.07
ALPHA = 0.4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(n: int, d: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def unit(rows: int) -> torch.Tensor:
        return F.normalize(torch.randn(rows, d, generator=g), dim=1)

    ids = torch.tensor([0, 1, 0, 2, 3, 1, 4][:n])  # positives shared across the two ranks
    return {"img": unit(n), "txt": unit(n), "t_img": unit(n), "t_txt": unit(n), "ids": ids}


def _losses(data: dict[str, torch.Tensor], queue: FeatureQueue) -> dict[str, torch.Tensor]:
    img = data["img"].clone().requires_grad_()
    txt = data["txt"].clone().requires_grad_()
    temp = torch.tensor(TEMP, requires_grad=True)
    tgd = TgDLoss()(
        img, txt, data["ids"], temp, data["t_img"], data["t_txt"],
        queue.image_queue, queue.text_queue, queue.id_queue, ALPHA,
    )  # fmt: skip
    gcpr = GCPRLoss()(img, txt, data["ids"], temp, tgd["soft_i2t"], tgd["soft_t2i"])
    (gcpr["gcpr"] + tgd["tgd"]).backward()
    return {
        "gcpr": gcpr["gcpr"].detach(),
        "tgd": tgd["tgd"].detach(),
        "img_grad": img.grad,
        "txt_grad": txt.grad,
        "temp_grad": temp.grad,
        "soft_i2t": tgd["soft_i2t"],
        "sim_i2t": gcpr["sim_i2t"],
    }


def _queue_with_history(d: int = 8) -> FeatureQueue:
    """Two filled slots (one a positive of id 1), four empty; written directly, not
    enqueued, because enqueue would gather from both ranks inside the workers."""
    q = FeatureQueue(d, 6)
    g = torch.Generator().manual_seed(9)
    q.image_queue[:, :2] = F.normalize(torch.randn(2, d, generator=g), dim=1).t()
    q.text_queue[:, :2] = F.normalize(torch.randn(2, d, generator=g), dim=1).t()
    q.id_queue[:2] = torch.tensor([1, 7])
    return q


def _worker(rank: int, port: int, out_dir: str, splits: list[list[int]]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    try:
        results = {}
        for n_global, split in ((sum(s), s) for s in splits):
            data = _data(n_global)
            start = sum(split[:rank])
            local = {k: v[start : start + split[rank]] for k, v in data.items()}
            queue = _queue_with_history()  # every rank holds the same queue, as after identical enqueues
            results[n_global] = _losses(local, queue)

        # enqueue gathers both ranks: rank 0 gives ids 100..102, rank 1 gives 200..201
        q = FeatureQueue(dim=2, size=4)
        n = 3 if rank == 0 else 2
        ids = torch.arange(n) + 100 * (rank + 1)
        feats = torch.stack([ids.float(), ids.float() + 0.5], 1)
        q.enqueue(feats, -feats, ids)
        results["queue"] = {k: v.clone() for k, v in q.state_dict().items()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_ranks_match_the_global_loss_and_gradients(tmp_path: Path) -> None:
    # equal halves (3 + 3) and a short last batch (4 + 3)
    splits = [[3, 3], [4, 3]]
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), splits), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    for split in splits:
        n = sum(split)
        ref = _losses(_data(n), _queue_with_history())
        per_rank = [r[n] for r in ranks]
        for key in ("gcpr", "tgd"):
            mean_loss = sum(r[key] for r in per_rank) / WORLD
            assert torch.allclose(mean_loss, ref[key], rtol=1e-5), (split, key)
        for key in ("img_grad", "txt_grad"):
            grads = torch.cat([r[key] for r in per_rank]) / WORLD
            assert torch.allclose(grads, ref[key], atol=1e-6), (split, key)
        # temp is replicated, not gathered: DDP's average of the ranks' grads is the global grad
        temp_grad = sum(r["temp_grad"] for r in per_rank) / WORLD
        assert torch.allclose(temp_grad, ref["temp_grad"], rtol=1e-4), split
        # local rows of the global similarity / soft-target matrices
        assert torch.allclose(torch.cat([r["sim_i2t"] for r in per_rank]), ref["sim_i2t"], atol=1e-5)
        assert torch.allclose(torch.cat([r["soft_i2t"] for r in per_rank]), ref["soft_i2t"], atol=1e-6)

    for r in ranks:
        q = r["queue"]
        # 5 gathered items in rank order into K=4: slots 0,1,2,3,0 -> item 4 overwrites slot 0
        assert q["id_queue"].tolist() == [201, 101, 102, 200]
        assert q["ptr"].tolist() == [1]
        assert q["image_queue"][0].tolist() == [201.0, 101.0, 102.0, 200.0]
        assert q["text_queue"][1].tolist() == [-201.5, -101.5, -102.5, -200.5]
