"""Each objective against a plain, obviously-correct reference (loops are fine here)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from r2d2.losses import (
    FeatureQueue,
    FgDLoss,
    FGRLoss,
    GCPRLoss,
    MLMLoss,
    TgDLoss,
    all_gather_no_grad,
    all_gather_with_grad,
    ema_update,
    fgr_labels,
    mask_tokens,
    multi_positive_targets,
    sample_hard_negatives,
    soft_targets,
    world_info,
)


def _feats(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1).float()
    txt = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1).float()
    return img, txt


def _ref_direction(rows, cols, row_ids, col_ids, temp, targets=None, valid=None) -> torch.Tensor:
    """-(sum_j y_ij log p_ij) averaged over rows, one row at a time."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(rows.shape[0]):
        keep = [j for j in range(cols.shape[0]) if valid is None or bool(valid[j])]
        logits = torch.stack([(rows[i].double() @ cols[j].double()) / temp for j in keep])
        logp = logits - torch.logsumexp(logits, 0)
        if targets is None:
            pos = [k for k, j in enumerate(keep) if int(col_ids[j]) == int(row_ids[i])]
            total = total - sum(logp[k] for k in pos) / len(pos)
        else:
            total = total - sum(targets[i, j].double() * logp[k] for k, j in enumerate(keep))
    return total / rows.shape[0]


def test_world_info_and_gather_are_identity_without_distributed() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    assert world_info() == (0, 1)
    assert all_gather_with_grad(x) is x
    y = all_gather_no_grad(x)
    assert not y.requires_grad and torch.equal(y, x)


def test_multi_positive_targets() -> None:
    t = multi_positive_targets(torch.tensor([0, 1, 0]), torch.tensor([0, 1, 0, 2]))
    expected = torch.tensor([[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0]])
    assert torch.equal(t, expected)
    assert torch.equal(multi_positive_targets(torch.tensor([5]), torch.tensor([1, 2])), torch.zeros(1, 2))


def test_gcpr_matches_loop_reference_with_duplicate_ids() -> None:
    img, txt = _feats(6, 8, seed=0)
    ids = torch.tensor([3, 7, 3, 1, 7, 9])
    temp = torch.tensor(0.07)
    img_a, txt_a = img.clone().requires_grad_(), txt.clone().requires_grad_()
    out = GCPRLoss()(img_a, txt_a, ids, temp)
    ref = (_ref_direction(img, txt, ids, ids, 0.07) + _ref_direction(txt, img, ids, ids, 0.07)) / 2
    assert out["gcpr"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.equal(out["targets"], multi_positive_targets(ids, ids))
    assert torch.equal(out["col_ids"], ids)
    assert torch.allclose(out["sim_i2t"], img @ txt.t() / 0.07, atol=1e-5)
    assert torch.allclose(out["sim_t2i"], txt @ img.t() / 0.07, atol=1e-5)
    assert not out["sim_i2t"].requires_grad

    # gradients agree with the reference's gradients
    img_b, txt_b = img.double().clone().requires_grad_(), txt.double().clone().requires_grad_()
    ref_g = (_ref_direction(img_b, txt_b, ids, ids, 0.07) + _ref_direction(txt_b, img_b, ids, ids, 0.07)) / 2
    ref_g.backward()
    out["gcpr"].backward()
    assert torch.allclose(img_a.grad.double(), img_b.grad, atol=1e-5)
    assert torch.allclose(txt_a.grad.double(), txt_b.grad, atol=1e-5)


def test_gcpr_uses_soft_targets_when_given() -> None:
    img, txt = _feats(4, 8, seed=1)
    ids = torch.arange(4)
    g = torch.Generator().manual_seed(2)
    soft_i2t = torch.softmax(torch.randn(4, 4, generator=g), 1)
    soft_t2i = torch.softmax(torch.randn(4, 4, generator=g), 1)
    out = GCPRLoss()(img, txt, ids, 0.1, soft_i2t=soft_i2t, soft_t2i=soft_t2i)
    ref = (
        _ref_direction(img, txt, ids, ids, 0.1, targets=soft_i2t)
        + _ref_direction(txt, img, ids, ids, 0.1, targets=soft_t2i)
    ) / 2
    assert out["gcpr"].item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match="soft_i2t"):
        GCPRLoss()(img, txt, ids, 0.1, soft_i2t=soft_i2t[:, :3])


def test_soft_targets_rows_sum_to_one_and_interpolate() -> None:
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(5, 9, generator=g)
    hard = multi_positive_targets(torch.tensor([0, 1, 2, 0, 4]), torch.tensor([0, 1, 2, 0, 4, 5, 6, 1, 0]))
    for alpha in (0.0, 0.4, 1.0):
        y = soft_targets(sim, hard, 0.5, alpha)
        assert torch.allclose(y.sum(1), torch.ones(5), atol=1e-6)
        assert torch.allclose(y, (1 - alpha) * hard + alpha * torch.softmax(sim / 0.5, 1), atol=1e-6)


def test_tgd_matches_loop_reference_and_masks_empty_queue_slots() -> None:
    b, d, k = 4, 8, 6
    img, txt = _feats(b, d, seed=3)
    t_img, t_txt = _feats(b, d, seed=4)
    q_img, q_txt = _feats(k, d, seed=5)
    ids = torch.tensor([10, 11, 10, 12])
    id_queue = torch.tensor([11, -1, 13, 10, -1, 14])
    temp, alpha = 0.1, 0.4
    img_a = img.clone().requires_grad_()
    out = TgDLoss()(img_a, txt, ids, torch.tensor(temp), t_img, t_txt, q_img.t(), q_txt.t(), id_queue, alpha)

    cols_txt, cols_img = torch.cat([t_txt, q_txt]), torch.cat([t_img, q_img])
    col_ids = torch.cat([ids, id_queue])
    valid = col_ids >= 0

    def targets(t_rows, cols):
        rows = []
        for i in range(b):
            keep = [j for j in range(len(col_ids)) if valid[j]]
            denom = sum(math.exp(float(t_rows[i] @ cols[j]) / temp) for j in keep)
            npos = sum(1 for j in keep if col_ids[j] == ids[i])
            rows.append(
                [
                    (1 - alpha) * (float(col_ids[j] == ids[i]) / npos if valid[j] else 0.0)
                    + (alpha * math.exp(float(t_rows[i] @ cols[j]) / temp) / denom if valid[j] else 0.0)
                    for j in range(len(col_ids))
                ]
            )
        return torch.tensor(rows)

    y_i2t, y_t2i = targets(t_img, cols_txt), targets(t_txt, cols_img)
    ref = (
        _ref_direction(img, cols_txt, ids, col_ids, temp, y_i2t, valid)
        + _ref_direction(txt, cols_img, ids, col_ids, temp, y_t2i, valid)
    ) / 2
    assert out["tgd"].item() == pytest.approx(ref.item(), rel=1e-5)
    out["tgd"].backward()
    assert torch.isfinite(img_a.grad).all() and img_a.grad.abs().sum() > 0

    # soft targets over the GCPR columns (the batch only)
    hard = multi_positive_targets(ids, ids)
    assert torch.allclose(out["soft_i2t"], soft_targets(t_img @ t_txt.t(), hard, temp, alpha), atol=1e-6)
    assert torch.allclose(out["soft_t2i"], soft_targets(t_txt @ t_img.t(), hard, temp, alpha), atol=1e-6)
    assert torch.allclose(out["soft_i2t"].sum(1), torch.ones(b), atol=1e-6)

    # what sits in an empty slot does not matter
    q_img2, q_txt2 = q_img.clone(), q_txt.clone()
    q_img2[1], q_txt2[4] = 5.0, -3.0
    out2 = TgDLoss()(img, txt, ids, temp, t_img, t_txt, q_img2.t(), q_txt2.t(), id_queue, alpha)
    assert out2["tgd"].item() == pytest.approx(out["tgd"].item(), rel=1e-6)


def test_tgd_with_alpha_zero_and_empty_queue_equals_gcpr() -> None:
    img, txt = _feats(5, 8, seed=6)
    ids = torch.tensor([0, 1, 1, 2, 3])
    q = FeatureQueue(8, 4)
    out = TgDLoss()(img, txt, ids, 0.05, img, txt, q.image_queue, q.text_queue, q.id_queue, 0.0)
    gcpr = GCPRLoss()(img, txt, ids, 0.05)
    assert out["tgd"].item() == pytest.approx(gcpr["gcpr"].item(), rel=1e-6)
    assert torch.allclose(out["soft_i2t"], gcpr["targets"])


def test_queue_wraps_around_with_a_short_last_batch() -> None:
    q = FeatureQueue(dim=2, size=10)
    assert q.id_queue.tolist() == [-1] * 10
    items = torch.arange(15)
    feats = torch.stack([items.float(), -items.float()], 1)
    for start, n in ((0, 4), (4, 4), (8, 4), (12, 3)):
        q.enqueue(feats[start : start + n], feats[start : start + n] * 10, items[start : start + n] + 100)
    expected = [10, 11, 12, 13, 14, 5, 6, 7, 8, 9]
    assert q.ptr.tolist() == [5]
    assert q.id_queue.tolist() == [e + 100 for e in expected]
    assert q.image_queue[0].tolist() == [float(e) for e in expected]
    assert q.image_queue[1].tolist() == [-float(e) for e in expected]
    assert q.text_queue[0].tolist() == [10.0 * e for e in expected]
    assert set(q.state_dict()) == {"image_queue", "text_queue", "id_queue", "ptr"}


def test_queue_larger_batch_than_queue_and_zero_size() -> None:
    q = FeatureQueue(dim=1, size=4)
    q.enqueue(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([0]))  # ptr 1
    items = torch.arange(1, 7)
    q.enqueue(items.float()[:, None], items.float()[:, None], items)  # slots 1,2,3,0,1,2: last 4 survive
    assert q.id_queue.tolist() == [4, 5, 6, 3]
    assert q.ptr.tolist() == [3]
    empty = FeatureQueue(dim=3, size=0)
    empty.enqueue(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([1, 2]))
    assert empty.image_queue.shape == (3, 0)


def test_ema_update_exact_values_and_buffers() -> None:
    student, teacher = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([1.0, 2.0, 4.0]))
        teacher.weight.copy_(torch.tensor([0.0, 2.0, -4.0]))
        student.bias.fill_(1.0)
        teacher.bias.fill_(3.0)
        student.running_mean.fill_(7.0)
    ema_update(teacher, student, momentum=0.75)
    assert teacher.weight.tolist() == [0.25, 2.0, -2.0]
    assert teacher.bias.tolist() == [2.5, 2.5, 2.5]
    assert teacher.running_mean.tolist() == [7.0, 7.0, 7.0]
    with pytest.raises(ValueError, match="differ"):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.9)


def _reference_neg_probs(sim: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(sim.double(), 1) * (~positive)
    return p / p.sum(1, keepdim=True)


def test_hard_negative_sampler_matches_softmax_with_positives_zeroed(monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    row_ids = torch.tensor([0, 1, 2])
    col_ids = torch.tensor([0, 1, 2, 0, 3])
    sim_t2i = torch.randn(3, 5, generator=g) * 2
    sim_i2t = torch.randn(3, 5, generator=g) * 2 + 50.0  # large logits: the max shift keeps it finite
    reps = 40_000  # 4 standard errors of margin for the 0.01 tolerance
    calls = []
    real = torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda *a, **k: calls.append(1) or real(*a, **k))
    neg_img, neg_txt = sample_hard_negatives(
        sim_t2i.repeat(reps, 1),
        sim_i2t.repeat(reps, 1),
        row_ids.repeat(reps),
        col_ids,
        torch.Generator().manual_seed(1),
    )
    assert len(calls) == 2  # one vectorised draw per direction
    positive = row_ids[:, None] == col_ids[None, :]
    for picks, sim in ((neg_img, sim_t2i), (neg_txt, sim_i2t)):
        picks = picks.reshape(reps, 3)
        assert not positive[torch.arange(3).expand(reps, 3), picks].any()
        freq = torch.stack([torch.bincount(picks[:, i], minlength=5) for i in range(3)]).double() / reps
        assert (freq - _reference_neg_probs(sim, positive)).abs().max() < 0.01


def test_hard_negative_sampler_fallbacks() -> None:
    row_ids = torch.tensor([0, 1, 2])
    col_ids = torch.tensor([0, 0, 1, 2])
    sim = torch.zeros(3, 4)
    sim[1, [0, 1, 3]] = float("-inf")  # no finite negative weight: uniform over non-positives
    sim[2] = float("nan")
    neg_img, _ = sample_hard_negatives(sim.repeat(500, 1), sim.repeat(500, 1), row_ids.repeat(500), col_ids)
    picks = neg_img.reshape(500, 3)
    assert set(picks[:, 0].tolist()) == {2, 3}
    assert set(picks[:, 1].tolist()) == {0, 1, 3}
    assert set(picks[:, 2].tolist()) == {0, 1, 2}
    # every column positive: any column (documented degenerate case), never an error
    a, b = sample_hard_negatives(
        torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([4, 4]), torch.tensor([4, 4])
    )
    assert a.shape == b.shape == (2,)


def test_fgr_loss_class_weights_match_manual_weighted_ce() -> None:
    g = torch.Generator().manual_seed(0)
    lt, li = torch.randn(9, 2, generator=g), torch.randn(9, 2, generator=g)
    labels = fgr_labels(3, "cpu")
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]

    def manual(logits, w):
        ce = [-torch.log_softmax(logits[i], 0)[labels[i]] for i in range(9)]
        return sum(w[labels[i]] * ce[i] for i in range(9)) / sum(w[labels[i]] for i in range(9))

    for w in ((1.0, 2.0), (1.0, 1.0), (3.0, 0.5)):
        out = FGRLoss(w)(lt, li)["fgr"]
        assert out.item() == pytest.approx(((manual(lt, w) + manual(li, w)) / 2).item(), rel=1e-6)
    assert FGRLoss((1.0, 2.0))(lt, li)["fgr"].item() != pytest.approx(
        FGRLoss((1.0, 1.0))(lt, li)["fgr"].item()
    )
    with pytest.raises(ValueError):
        FGRLoss()(torch.randn(4, 2), torch.randn(4, 2))


def test_mask_tokens_rate_specials_padding_and_labels() -> None:
    pad, cls, sep, mask_id, vocab = 0, 101, 102, 103, 500
    g = torch.Generator().manual_seed(0)
    b, length = 256, 64
    ids = torch.randint(104, vocab, (b, length), generator=g)
    lengths = torch.randint(10, length + 1, (b,), generator=g)
    attn = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, 0] = cls
    ids[torch.arange(b), lengths - 1] = sep
    ids[attn == 0] = pad
    masked, labels = mask_tokens(ids, attn, vocab, mask_id, [pad, cls, sep, mask_id], 0.15, generator=g)
    selected = labels != -100
    candidates = (attn == 1) & (ids != cls) & (ids != sep)
    assert not (selected & ~candidates).any()
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])
    rate = selected.sum().item() / candidates.sum().item()
    assert abs(rate - 0.15) < 0.01
    became_mask = (masked == mask_id) & selected
    kept = (masked == ids) & selected
    assert abs(became_mask.sum().item() / selected.sum().item() - 0.8) < 0.03
    assert abs(kept.sum().item() / selected.sum().item() - 0.1) < 0.03
    assert not torch.isin(masked[selected & ~became_mask], torch.tensor([pad, cls, sep, mask_id])).any()


def test_mask_tokens_always_masks_at_least_one() -> None:
    ids = torch.tensor([[101, 5, 6, 102, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 0]])
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        _, labels = mask_tokens(ids, attn, 200, 103, [0, 101, 102, 103], probability=0.01, generator=g)
        sel = (labels != -100).nonzero()[:, 1].tolist()
        assert len(sel) >= 1 and set(sel) <= {1, 2}


def test_mlm_loss_reference_and_grad_safe_zero() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 7, generator=g, requires_grad=True)
    labels = torch.tensor([[-100, 3, -100, 1], [6, -100, -100, -100]])
    ref = (
        sum(
            -torch.log_softmax(logits[i, j], 0)[labels[i, j]]
            for i in range(2)
            for j in range(4)
            if labels[i, j] >= 0
        )
        / 3
    )
    assert MLMLoss()(logits, labels)["mlm"].item() == pytest.approx(ref.item(), rel=1e-6)
    zero = MLMLoss()(logits, torch.full_like(labels, -100))["mlm"]
    assert zero.item() == 0.0
    zero.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("kind", ["smooth_l1", "cosine"])
def test_fgd_zero_when_equal_positive_otherwise_and_masks_padding(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    tokens, cls = torch.randn(2, 5, 8, generator=g), F.normalize(torch.randn(2, 4, generator=g), dim=1)
    attn = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    loss = FgDLoss(kind)
    assert loss(tokens, tokens, attn, cls, cls)["fgd"].item() == pytest.approx(0.0, abs=1e-6)

    student = tokens.clone()
    student[0, 3:] += 5.0  # padding only: ignored
    assert loss(student, tokens, attn, cls, cls)["fgd"].item() == pytest.approx(0.0, abs=1e-6)

    student = (tokens + 0.5 * torch.randn(2, 5, 8, generator=g)).requires_grad_()
    teacher = tokens.clone().requires_grad_()
    out = loss(student, teacher, attn, cls, cls)
    assert out["fgd"].item() > 0
    out["fgd"].backward()
    assert teacher.grad is None and student.grad[0, 3:].abs().sum() == 0

    if kind == "smooth_l1":
        valid = attn.bool()
        ref_tok = F.smooth_l1_loss(student.detach()[valid], tokens[valid])
        assert out["fgd_tokens"].item() == pytest.approx(ref_tok.item(), rel=1e-6)
        assert out["fgd"].item() == pytest.approx(ref_tok.item() / 2, rel=1e-6)
    with pytest.raises(ValueError):
        FgDLoss("l2")  # type: ignore[arg-type]
