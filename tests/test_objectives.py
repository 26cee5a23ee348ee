"""Issue 13's objectives and set prediction, each against a reference: similarity logits
(F.normalize + matmul), region feature masking, MDETR's token-level InfoNCE, UNITER's OT
word-region alignment (its IPOT code, and an exact LP by scipy), SwAV's prototypes (its
Sinkhorn code), DETR's set loss (brute-force matching, GIoU by hand) and CTC (torch's own);
their type rules and diagnostics; export of a spec holding them; the batch-level ones under
two gloo processes equal one process."""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgraph.build import load
from mmgraph.components import registry
from mmgraph.components.nn import (
    alignment,
    ctc,
    masked_regions,
    ops,
    prototypes,
    sets,
    similarity,
)
from mmgraph.errors import InputError

from helpers import errors, graph

# ---------------------------------------------------------------------------------------------
# similarity


def test_similarity_types_logits_by_the_second_batch():
    g = graph("""
    model m {
      input img: Vec<image>[B, 16]
      input cls: Vec<text>[C, 16]
      output similarity(img, cls, temperature=0.01) as s
    }
    """)
    assert str(g.type_of(g.outputs["s"])) == "Logits<image,text>[B, C]"


def test_similarity_diagnostics():
    src = """
    model m {
      input img: Vec[B, 16]
      input cls: Vec[C, 8]
      input seq: Seq[B, 4, 16]
      output similarity(img, %s) as s
    }
    """
    assert errors(src % "cls") == [
        ("E301", 6, 26, "similarity needs the same embedding width from img and cls, but "
                        "they give 16 and 8")]
    assert errors(src % "seq") == [
        ("E302", 6, 26, "similarity expects Vec[B, D] for 'b' but seq gives Seq[B, 4, 16]")]
    assert errors(src.replace("%s)", "cls, temperature=0)"))[0][:3] == ("E203", 6, 43)


@pytest.mark.parametrize("normalize", [True, False])
def test_similarity_is_normalize_then_matmul(normalize):
    torch.manual_seed(0)
    a, b = torch.randn(3, 8), torch.randn(5, 8)
    face = similarity.Similarity(temperature=0.05, learnable=False, normalize=normalize)
    want = (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t() if normalize else a @ b.t())
    torch.testing.assert_close(face(a, b), want / 0.05, rtol=1e-6, atol=1e-5)
    assert not list(face.parameters())
    learned = similarity.Similarity(temperature=0.001, learnable=True, normalize=True)
    assert math.isclose(learned(a, b).abs().max().item(), 100 * (want if normalize else
                        F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()).abs().max().item(),
                        rel_tol=1e-5)  # a learned scale is bounded by 100, as CLIP's
    assert [n for n, _ in learned.named_parameters()] == ["logit_scale"]


# ---------------------------------------------------------------------------------------------
# mask_features


def test_mask_features_masks_in_training_only():
    x = torch.randn(4, 50, 8) + 3  # no feature is 0 by chance
    gen = torch.Generator().manual_seed(0)
    out, mask = ops.mask_features(x, prob=0.3, training=True, generator=gen)
    assert mask.dtype == torch.bool and mask.shape == (4, 50)
    assert 0.2 < mask.float().mean().item() < 0.4
    assert (out[mask] == 0).all() and torch.equal(out[~mask], x[~mask])
    out, mask = ops.mask_features(x, prob=0.3, training=False)
    assert out is x and not mask.any()


def test_mask_features_type_and_diagnostics():
    g = graph("""
    model m {
      input r: Seq<regions>[B, 36, 16]
      masked, m = mask_features(r, prob=0.15)
      output masked
      output m
    }
    """)
    assert str(g.type_of(g.outputs["m"])) == "Mask<regions>[B, 36]"
    assert str(g.type_of(g.outputs["masked"])) == "Seq<regions>[B, 36, 16]"
    assert errors("""
    model m {
      input t: Tokens[B, 6]
      masked, m = mask_features(t)
      output masked
    }
    """) == [("E302", 4, 29, "mask_features expects Seq[B, N, D] for 'x' but t gives "
                             "Tokens<text>[B, 6]")]
    assert errors("""
    model m {
      input r: Seq[B, 6, 4]
      masked, m = mask_features(r, prob=1.5)
      output masked
    }
    """)[0][:3] == ("E203", 4, 37)


def test_masked_regions_scores_the_masked_regions_only():
    torch.manual_seed(0)
    pred, feats = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]]).bool()
    # UNITER's MRFR, LXMERT's feature regression
    torch.testing.assert_close(masked_regions.masked_regions(pred, feats, mask, metric="mse"),
                               F.mse_loss(pred[mask], feats[mask]))
    torch.testing.assert_close(
        masked_regions.masked_regions(pred, feats, mask, metric="smooth_l1"),
        F.smooth_l1_loss(pred[mask], feats[mask]))
    # UNITER's MRC (the detector's label) and MRC-kl (its class distribution)
    labels = torch.randint(0, 8, (2, 6))
    torch.testing.assert_close(masked_regions.masked_regions(pred, labels, mask, metric="ce"),
                               F.cross_entropy(pred[mask], labels[mask]))
    probs = torch.softmax(torch.randn(2, 6, 8), -1)
    torch.testing.assert_close(
        masked_regions.masked_regions(pred, probs, mask, metric="kl"),
        F.kl_div(F.log_softmax(pred[mask], -1), probs[mask], reduction="batchmean"))
    none = masked_regions.masked_regions(pred, feats, torch.zeros_like(mask), metric="mse")
    assert none.item() == 0


def test_masked_regions_in_a_spec_and_diagnostics():
    src = """
    model m {
      input r: Seq<regions>[B, 36, 16]
      input lab: Labels[B, 36]
      masked, m = mask_features(r)
      connector enc: linear(out=16)
      h = enc(masked)
      loss mrfr = masked_regions(h, r, m)
      loss mrc = masked_regions(classifier(h, classes=%s), %s, m, metric="ce")
    }
    """
    assert errors(src % (10, "lab")) == []
    assert errors(src % (10, "r")) == [
        ("E302", 9, 56, "mrc expects Labels[B] or Labels[B, N] for 'target' but r gives "
                        "Seq<regions>[B, 36, 16]")]
    assert errors(src.replace("masked_regions(h, r, m)", "masked_regions(h, lab, m)")
                  % (10, "lab")) == [
        ("E302", 8, 33, "mrfr: metric=\"mse\" needs a target per region of h's shape, but lab "
                        "gives Labels[B, 36]")]


# ---------------------------------------------------------------------------------------------
# token_contrastive: MDETR's contrastive alignment


def mdetr_contrastive_align(img, txt, positive_map, num_boxes, temperature=0.07):
    """MDETR's `loss_contrastive_align` (models/mdetr.py), on normalised projections."""
    logits = torch.matmul(img, txt.transpose(-1, -2)) / temperature
    positive_logits = -logits.masked_fill(~positive_map, 0)
    negative_logits = logits
    boxes_with_pos = positive_map.any(2)
    pos_term = positive_logits.sum(2)
    neg_term = negative_logits.logsumexp(2)
    nb_pos = positive_map.sum(2) + 1e-6
    box_to_token_loss = (pos_term / nb_pos + neg_term).masked_fill(~boxes_with_pos, 0).sum()
    tokens_with_pos = positive_map.any(1)
    pos_term = positive_logits.sum(1)
    neg_term = negative_logits.logsumexp(1)
    nb_pos = positive_map.sum(1) + 1e-6
    tokens_to_boxes_loss = (pos_term / nb_pos + neg_term).masked_fill(~tokens_with_pos,
                                                                        0).sum()
    return (box_to_token_loss + tokens_to_boxes_loss) / 2 / num_boxes


def test_token_contrastive_is_mdetrs_contrastive_alignment():
    torch.manual_seed(0)
    queries, tokens = torch.randn(2, 6, 8), torch.randn(2, 5, 8)
    pos = torch.zeros(2, 6, 5, dtype=torch.bool)
    pos[0, 1, 0:2] = pos[0, 4, 3] = pos[1, 0, 4] = True  # three matched boxes, spans of tokens
    got = alignment.token_contrastive(queries, tokens, pos, temperature=0.07, normalize=True)
    want = mdetr_contrastive_align(F.normalize(queries, dim=-1), F.normalize(tokens, dim=-1),
                                   pos, num_boxes=3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_token_contrastive_without_positives_pairs_positions():
    torch.manual_seed(0)
    a, b = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    got = alignment.token_contrastive(a, b, temperature=0.5, normalize=False)
    logits = a @ b.transpose(1, 2) / 0.5
    labels = torch.arange(4).repeat(3)
    want = (F.cross_entropy(logits.reshape(-1, 4), labels)
            + F.cross_entropy(logits.transpose(1, 2).reshape(-1, 4), labels)) / 2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_token_contrastive_diagnostics():
    src = """
    model m {
      input q: Seq[B, 6, 8]
      input t: Seq[B, 5, 8]
      input p: Tensor<bool>[B, 6, %s]
      loss l = token_contrastive(q, t%s)
    }
    """
    assert errors(src % (5, ", p")) == []
    assert errors(src % (5, "")) == [
        ("E301", 6, 33, "l needs the same token count (without `positive`, "
                        "token i of a pairs with token i of b) from q and t, but they give 6 "
                        "and 5")]
    assert errors(src % (4, ", p")) == [
        ("E301", 6, 36, "l needs the same token count of b from t and p, but "
                        "they give 5 and 4")]


# ---------------------------------------------------------------------------------------------
# word_region_ot: UNITER's WRA


def uniter_ipot(C, x_len, x_pad, y_len, y_pad, joint_pad, beta, iteration, k):
    """UNITER's `ipot` (model/ot.py)."""
    b, m, n = C.size()
    sigma = torch.ones(b, m, dtype=C.dtype) / x_len.unsqueeze(1)
    T = torch.ones(b, n, m, dtype=C.dtype)
    A = torch.exp(-C.transpose(1, 2) / beta)
    sigma.masked_fill_(x_pad, 0)
    joint_pad = joint_pad.transpose(1, 2)
    T.masked_fill_(joint_pad, 0)
    A.masked_fill_(joint_pad, 0)
    x_len = x_len.unsqueeze(1).unsqueeze(2)
    y_len = y_len.unsqueeze(1).unsqueeze(2)
    x_mask = (x_pad.to(C.dtype) * 1e4).unsqueeze(1)
    y_mask = (y_pad.to(C.dtype) * 1e4).unsqueeze(1)
    for _ in range(iteration):
        Q = A * T
        sigma = sigma.view(b, m, 1)
        for _ in range(k):
            delta = 1 / (y_len * Q.matmul(sigma).view(b, 1, n) + y_mask)
            sigma = 1 / (x_len * delta.matmul(Q) + x_mask)
        T = delta.view(b, n, 1) * Q * sigma
    T.masked_fill_(joint_pad, 0)
    return T


def uniter_ot_dist(txt, img, txt_pad, img_pad, beta=0.5, iteration=50, k=1):
    """UNITER's `optimal_transport_dist` with its `cost_matrix_cosine`."""
    x, y = F.normalize(txt, p=2, dim=-1, eps=1e-5), F.normalize(img, p=2, dim=-1, eps=1e-5)
    cost = 1 - x.matmul(y.transpose(1, 2))
    joint_pad = txt_pad.unsqueeze(-1) | img_pad.unsqueeze(-2)
    cost = cost.masked_fill(joint_pad, 0)
    txt_len = (txt_pad.size(1) - txt_pad.sum(dim=1)).to(cost.dtype)
    img_len = (img_pad.size(1) - img_pad.sum(dim=1)).to(cost.dtype)
    T = uniter_ipot(cost.detach(), txt_len, txt_pad, img_len, img_pad, joint_pad, beta,
                    iteration, k)
    return cost.matmul(T.detach()).diagonal(dim1=-2, dim2=-1).sum(-1)


def test_word_region_ot_is_uniters_ipot_distance_with_padding():
    torch.manual_seed(0)
    words, regions = torch.randn(3, 5, 8), torch.randn(3, 4, 8)
    w_keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]).bool()
    r_keep = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]).bool()
    got = alignment.ot_distance(words, regions, w_keep, r_keep, beta=0.5, iterations=50, k=1)
    want = uniter_ot_dist(words, regions, ~w_keep, ~r_keep)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # a padded example is the example alone
    alone = alignment.ot_distance(words[1:2, :3], regions[1:2, :2],
                                  torch.ones(1, 3, dtype=torch.bool),
                                  torch.ones(1, 2, dtype=torch.bool),
                                  beta=0.5, iterations=50, k=1)
    torch.testing.assert_close(got[1:2], alone, rtol=1e-6, atol=1e-6)
    # the loss: mean distance; with `matched`, UNITER's (sum pos - sum neg) / pairs
    matched = torch.tensor([1, 0, 1])
    loss = alignment.word_region_ot(words, regions, w_keep, r_keep, matched, beta=0.5,
                                    iterations=50, k=1)
    torch.testing.assert_close(loss, (want[0] - want[1] + want[2]) / 3)


def test_ipot_converges_to_the_exact_transport_of_a_linear_program():
    """The distance of the exact OT plan between uniform weights, by scipy's LP solver (POT
    is not a dependency)."""
    from scipy.optimize import linprog

    torch.manual_seed(1)
    words, regions = torch.randn(1, 3, 6, dtype=torch.float64), torch.randn(1, 4, 6,
                                                                           dtype=torch.float64)
    cost = alignment.cosine_cost(words, regions)[0].double().numpy()
    n, m = cost.shape
    rows = np.kron(np.eye(n), np.ones((1, m)))  # sum_j P_ij = 1/n
    cols = np.kron(np.ones((1, n)), np.eye(m))  # sum_i P_ij = 1/m
    lp = linprog(cost.reshape(-1), A_eq=np.vstack([rows, cols]),
                 b_eq=np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)]),
                 bounds=(0, None), method="highs")
    keep_w, keep_r = torch.ones(1, n, dtype=torch.bool), torch.ones(1, m, dtype=torch.bool)
    plan = alignment.ipot(alignment.cosine_cost(words, regions).double(), keep_w, keep_r,
                          beta=0.5, iterations=2000, k=1)
    torch.testing.assert_close(plan.sum(2), torch.full((1, n), 1 / n, dtype=torch.float64))
    torch.testing.assert_close(plan.sum(1), torch.full((1, m), 1 / m, dtype=torch.float64))
    got = alignment.ot_distance(words, regions, keep_w, keep_r, beta=0.5, iterations=2000, k=1)
    assert abs(got.item() - lp.fun) < 1e-6, (got.item(), lp.fun)


def test_word_region_ot_gradients_flow_through_the_cost_alone():
    torch.manual_seed(0)
    words = torch.randn(2, 4, 8, requires_grad=True)
    regions = torch.randn(2, 3, 8, requires_grad=True)
    loss = alignment.word_region_ot(words, regions, beta=0.5, iterations=20, k=1)
    loss.backward()
    assert words.grad.abs().sum() > 0 and regions.grad.abs().sum() > 0


def test_word_region_ot_diagnostics():
    src = """
    model m {
      input w: Seq[B, 5, 8]
      input r: Seq[B, 4, 8]
      input wm: Mask[B, %s]
      input y: Labels[B%s]
      loss l = word_region_ot(w, r, a_mask=wm, matched=y)
    }
    """
    assert errors(src % (5, "")) == []
    assert errors(src % (4, "")) == [
        ("E301", 7, 40, "l needs the same token count from w and wm, but they "
                        "give 5 and 4")]
    assert errors(src % (5, ", 5")) == [
        ("E302", 7, 52, "l expects one label per pair, Labels[B], for 'matched' "
                        "but y gives Labels[B, 5]")]


# ---------------------------------------------------------------------------------------------
# prototypes: SwAV


def swav_sinkhorn(out, epsilon=0.05, iterations=3, world_size=1):
    """SwAV's `distributed_sinkhorn` (main_swav.py) in one process."""
    Q = torch.exp(out / epsilon).t()
    B = Q.shape[1] * world_size
    K = Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def swav_loss(za, zb, weight, temperature=0.1):
    """SwAV's training loss for two crops, both assigned."""
    protos = F.normalize(weight, dim=1)
    out = [F.normalize(z, dim=1) @ protos.t() for z in (za, zb)]
    loss = 0
    for crop in (0, 1):
        q = swav_sinkhorn(out[crop].detach())
        other = out[1 - crop]
        loss -= torch.mean(torch.sum(q * F.log_softmax(other / temperature, dim=1), dim=1))
    return loss / 2


def test_prototypes_is_swavs_swapped_prediction():
    torch.manual_seed(0)
    face = prototypes.Prototypes(in_width=8, prototypes=5, temperature=0.1, epsilon=0.05,
                                 iterations=3)
    za, zb = torch.randn(6, 8), torch.randn(6, 8)
    torch.testing.assert_close(face(za, zb), swav_loss(za, zb, face.weight.detach()),
                               rtol=1e-5, atol=1e-5)
    # Seq: every token is an example
    sa, sb = za.reshape(2, 3, 8), zb.reshape(2, 3, 8)
    torch.testing.assert_close(face(sa, sb), face(za, zb))


def test_sinkhorn_codes_share_the_batch_equally_between_prototypes():
    torch.manual_seed(0)
    scores = F.normalize(torch.randn(40, 8), dim=1) @ F.normalize(torch.randn(4, 8), dim=1).t()
    codes = prototypes.sinkhorn(scores, epsilon=0.05, iterations=50)
    torch.testing.assert_close(codes.sum(1), torch.ones(40))
    torch.testing.assert_close(codes.sum(0), torch.full((4,), 10.0), rtol=1e-4, atol=1e-4)


def test_prototypes_diagnostics():
    src = """
    model m {
      input a: %s
      input b: Vec[B, 16]
      loss l = prototypes(a, b, prototypes=%s)
    }
    """
    assert errors(src % ("Vec[B, 16]", 8)) == []
    assert errors(src % ("Seq[B, 4, 16]", 8)) == [
        ("E302", 5, 26, "l compares two views of one kind, but a gives Seq[B, 4, 16] and b "
                        "gives Vec[B, 16]")]
    assert errors(src % ("Vec[B, 16]", 0))[0][:3] == ("E203", 5, 40)


# ---------------------------------------------------------------------------------------------
# set_loss: DETR


def test_giou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 1.0]])
    got = sets.generalized_box_iou(a, b)[0]
    # overlap 1, union 7, hull 9; same box; apart: union 5, hull 4 x 2 = 8, no overlap
    want = torch.tensor([1 / 7 - (9 - 7) / 9, 1.0, 0 - (8 - 5) / 8])
    torch.testing.assert_close(got, want)
    cxcywh = torch.tensor([[1.0, 1.0, 2.0, 2.0]])
    torch.testing.assert_close(sets.xyxy(cxcywh, "cxcywh"), a)


def _cost(logits, boxes, labels, tboxes, wc=1.0, wl=5.0, wg=2.0):
    prob = logits.softmax(-1)
    c = np.zeros((len(boxes), len(labels)))
    for i in range(len(boxes)):
        for j in range(len(labels)):
            giou = sets.generalized_box_iou(sets.xyxy(boxes[i:i + 1], "cxcywh"),
                                            sets.xyxy(tboxes[j:j + 1], "cxcywh"))[0, 0]
            c[i, j] = (-wc * prob[i, labels[j]] + wl * (boxes[i] - tboxes[j]).abs().sum()
                       - wg * giou).item()
    return c


def _random_boxes(gen, n):
    centre = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
    return torch.cat([centre, torch.rand(n, 2, generator=gen) * 0.3 + 0.05], dim=1)


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_matching_is_the_cheapest_permutation(seed):
    gen = torch.Generator().manual_seed(seed)
    q, m, classes = 5, 3, 4
    logits = torch.randn(q, classes + 1, generator=gen)
    boxes, tboxes = _random_boxes(gen, q), _random_boxes(gen, m)
    labels = torch.randint(0, classes, (m,), generator=gen)
    rows, cols = sets.hungarian_match(logits, boxes, labels, tboxes, class_weight=1.0,
                                      l1_weight=5.0, giou_weight=2.0, fmt="cxcywh")
    c = _cost(logits, boxes, labels, tboxes)
    best = min(sum(c[p[j], j] for j in range(m)) for p in itertools.permutations(range(q), m))
    assert math.isclose(c[rows.numpy(), cols.numpy()].sum(), best, rel_tol=1e-6)


def test_set_loss_is_detrs_loss_on_the_matches():
    gen = torch.Generator().manual_seed(0)
    b, q, classes = 2, 4, 3
    logits = torch.randn(b, q, classes + 1, generator=gen)
    boxes = torch.stack([_random_boxes(gen, q) for _ in range(b)])
    labels = torch.tensor([[2, 0, -100], [1, -100, -100]])  # 2 objects, 1 object, padding
    tboxes = torch.stack([_random_boxes(gen, 3) for _ in range(b)])
    got = sets.set_loss(logits, boxes, labels, tboxes, class_weight=1.0, l1_weight=5.0,
                        giou_weight=2.0, no_object_weight=0.1, format="cxcywh",
                        ignore_index=-100)
    # DETR by hand: brute-force matching, weighted CE over all queries, sums / 3 boxes
    target = torch.full((b, q), classes)
    l1 = giou = 0.0
    for i, n in enumerate((2, 1)):
        c = _cost(logits[i], boxes[i], labels[i, :n], tboxes[i, :n])
        perm = min(itertools.permutations(range(q), n),
                   key=lambda p: sum(c[p[j], j] for j in range(n)))
        for j, row in enumerate(perm):
            target[i, row] = labels[i, j]
            l1 += (boxes[i, row] - tboxes[i, j]).abs().sum()
            giou += 1 - sets.generalized_box_iou(sets.xyxy(boxes[i, row:row + 1], "cxcywh"),
                                                 sets.xyxy(tboxes[i, j:j + 1], "cxcywh"))[0, 0]
    weight = torch.tensor([1.0] * classes + [0.1])
    ce = F.cross_entropy(logits.reshape(-1, classes + 1), target.reshape(-1), weight)
    torch.testing.assert_close(got, ce + 5 * l1 / 3 + 2 * giou / 3)
    # an image without objects: every query is no object; L1 and GIoU are 0, gradients flow
    boxes.requires_grad_(True)
    none = sets.set_loss(logits, boxes, torch.full((b, 2), -100), tboxes[:, :2],
                         class_weight=1.0, l1_weight=5.0, giou_weight=2.0,
                         no_object_weight=0.1, format="cxcywh", ignore_index=-100)
    torch.testing.assert_close(none, F.cross_entropy(logits.reshape(-1, classes + 1),
                                                     torch.full((b * q,), classes), weight))
    none.backward()


def test_set_loss_data_mistakes_are_input_errors():
    logits, boxes = torch.randn(1, 4, 4), torch.rand(1, 4, 4) * 0.3 + 0.2
    kw = dict(class_weight=1.0, l1_weight=5.0, giou_weight=2.0, no_object_weight=0.1,
              format="cxcywh", ignore_index=-100)
    with pytest.raises(InputError, match=r"target label 3 is not one of the 3 object classes "
                                         r"0..2 \(logit 3 is no object"):
        sets.set_loss(logits, boxes, torch.tensor([[3, -100]]), boxes[:, :2], **kw)
    with pytest.raises(InputError, match="target label -1 is not one"):
        sets.set_loss(logits, boxes, torch.tensor([[-1, 0]]), boxes[:, :2], **kw)
    flat = torch.zeros(1, 2, 4)  # no area, no width: 0 / 0
    with pytest.raises(InputError, match="a matching cost is not a number"):
        sets.set_loss(logits, torch.zeros(1, 4, 4), torch.tensor([[0, 1]]), flat, **kw)


def test_set_loss_diagnostics():
    src = """
    model m {
      input x: Seq[B, %s, 16]
      input lab: Labels[B, 5]
      input tb: Boxes[B, %s, 4]
      loss l = set_loss(classifier(x, classes=%s), box_head(x), lab, tb)
    }
    """
    assert errors(src % (8, 5, 4)) == []
    assert errors(src % (3, 5, 4)) == [
        ("E301", 6, 60, "l: 3 predictions cannot match 5 objects one to one (classifier gives "
                        "Logits[B, 3, 4])")]
    assert errors(src % (8, 6, 4)) == [
        ("E301", 6, 65, "l needs the same number of objects from lab and tb, but they give 5 "
                        "and 6")]
    assert errors(src % (8, 5, 1)) == [
        ("E301", 6, 21, "l needs at least one class and the no-object class, but classifier "
                        "scores 1")]
    assert errors(src.replace("box_head(x)", "x") % (8, 5, 4)) == [
        ("E302", 6, 47, "l expects Boxes[B, N, 4] for 'boxes' but x gives Seq[B, 8, 16]")]


# ---------------------------------------------------------------------------------------------
# ctc


def test_ctc_is_torchs_ctc_with_padding_and_frame_mask():
    torch.manual_seed(0)
    logits = torch.randn(3, 12, 6)
    targets = torch.tensor([[1, 2, 2, 3], [4, 5, -100, -100], [3, -100, -100, -100]])
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 9:] = False
    got = ctc.ctc(logits, targets, mask, blank=0, pad=-100, zero_infinity=False)
    want = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1),
                      torch.tensor([1, 2, 2, 3, 4, 5, 3]), torch.tensor([12, 9, 12]),
                      torch.tensor([4, 2, 1]), blank=0)
    torch.testing.assert_close(got, want)
    assert torch.isfinite(got)


def test_ctc_data_mistakes_are_input_errors():
    logits = torch.randn(2, 8, 5)
    with pytest.raises(InputError, match="holds the blank id 0"):
        ctc.ctc(logits, torch.tensor([[1, 0, 2], [1, 2, 3]]), blank=0, pad=-100,
                zero_infinity=False)
    with pytest.raises(InputError, match="tokens after the padding id -100"):
        ctc.ctc(logits, torch.tensor([[1, -100, 2], [1, 2, 3]]), blank=0, pad=-100,
                zero_infinity=False)
    # padding with the blank id itself is fine: it is never a token
    got = ctc.ctc(logits, torch.tensor([[1, 2, 0], [1, 2, 3]]), blank=0, pad=0,
                  zero_infinity=False)
    want = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), torch.tensor([[1, 2, 0], [1, 2, 3]]),
                      torch.tensor([8, 8]), torch.tensor([2, 3]))
    torch.testing.assert_close(got, want)


def test_ctc_diagnostics():
    src = """
    model m {
      input f: Seq[B, %s, 16]
      input t: Tokens[B, 10]
      loss l = ctc(lm_head(f, vocab=30), t%s)
    }
    """
    assert errors(src % ("T", "")) == []
    assert errors(src % (8, "")) == [
        ("E301", 5, 38, "l: 8 frames cannot align a transcript of 10 tokens (lm_head gives "
                        "Logits[B, 8, 30], t gives Tokens<text>[B, 10])")]
    assert errors(src % ("T", ", blank=30")) == [
        ("E203", 5, 47, "l: blank=30 is not a class of lm_head, which scores 30 classes")]
    pooled = src.replace("lm_head(f, vocab=30)", 'classifier(pool(f, mode="mean"), classes=30)')
    assert errors(pooled % ("T", "")) == [
        ("E302", 5, 16, "l needs per-frame logits Logits[B, T, V] but classifier gives "
                        "Logits[B, 30]")]


# ---------------------------------------------------------------------------------------------
# whole specs: listed, compiled, trained one step, exported without their losses

SPEC = """
model objectives {
  input image: Vec<image>[B, 16]
  input classes: Vec<text>[C, 16]
  input regions: Seq<regions>[B, 6, 16]
  input words: Seq<text>[B, 5, 16]
  input labels: Labels[B, 3]
  input boxes: Boxes[B, 3, 4]
  input frames: Seq<audio>[B, 12, 16]
  input transcript: Tokens[B, 4]

  head sim: similarity(temperature=0.01)
  connector proj: linear(out=16)
  masked, m = mask_features(regions, prob=0.3)
  r = proj(masked)
  output sim(image, classes) as scores
  output r
  loss align = token_contrastive(r, proj(regions), temperature=0.1)
  loss wra = word_region_ot(words, r)
  loss swav = prototypes(image, image, prototypes=4)
  loss det = set_loss(classifier(r, classes=5), box_head(r), labels, boxes)
  loss asr = ctc(lm_head(frames, vocab=7), transcript)
}
"""


def test_the_docs_example_checks_and_trains(tmp_path):
    from helpers import docs_example

    path = tmp_path / "example.mmg"
    path.write_text(docs_example("model objectives {")[0])
    torch.manual_seed(0)
    model = load(path).train()
    gen = torch.Generator().manual_seed(0)
    x = {"image": torch.randn(2, 64, generator=gen), "classes": torch.randn(3, 64, generator=gen),
         "regions": torch.randn(2, 36, 64, generator=gen),
         "words": torch.randn(2, 5, 64, generator=gen),
         "labels": torch.tensor([[0, 4, 9] + [-100] * 5, [2] + [-100] * 7]),
         "boxes": torch.rand(2, 8, 4, generator=gen) * 0.3 + 0.2,
         "frames": torch.randn(2, 50, 64, generator=gen),
         "transcript": torch.randint(1, 40, (2, 20), generator=gen)}
    x["transcript"][1, 12:] = -100
    losses = model.losses(**x)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert model(image=x["image"], classes=x["classes"])["zero_shot"].shape == (2, 3)


def test_the_components_are_listed():
    names = registry.names()
    for name in ("similarity", "mask_features", "token_contrastive", "word_region_ot",
                 "prototypes", "set_loss", "ctc"):
        assert name in names and registry.get(name).summary


@pytest.fixture()
def spec(tmp_path):
    path = tmp_path / "objectives.mmg"
    path.write_text(textwrap.dedent(SPEC))
    return path


def test_a_spec_with_every_objective_trains_a_step(spec):
    torch.manual_seed(0)
    model = load(spec).train()
    gen = torch.Generator().manual_seed(0)
    x = {"image": torch.randn(2, 16, generator=gen), "classes": torch.randn(3, 16, generator=gen),
         "regions": torch.randn(2, 6, 16, generator=gen),
         "words": torch.randn(2, 5, 16, generator=gen),
         "labels": torch.tensor([[0, 3, -100], [1, -100, -100]]),
         "boxes": torch.rand(2, 3, 4, generator=gen) * 0.3 + 0.2,
         "frames": torch.randn(2, 12, 16, generator=gen),
         "transcript": torch.tensor([[1, 2, 3, 4], [5, 6, -100, -100]])}
    losses = model.losses(**x)
    assert set(losses) == {"align", "wra", "swav", "det", "asr", "total"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    out = model(**x)
    assert out["scores"].shape == (2, 3) and out["r"].shape == (2, 6, 16)


def test_export_leaves_the_losses_out_and_matches_pytorch(spec, tmp_path):
    pytest.importorskip("onnxruntime")
    from mmgraph.export import targets
    from mmgraph.export.onnx_parts import export

    manifest = export(spec, tmp_path / "out", targets.load("onnx"), log=lambda _: None)
    (part,) = manifest["parts"]
    assert [o["name"] for o in part["outputs"]] == ["scores", "r"]
    for output, err in part["parity"]["fp32"].items():
        assert err["max_abs"] <= 1e-4, (output, err)


# ---------------------------------------------------------------------------------------------
# two processes (gloo) compute the batch-level losses as one process on the global batch


def _worker(rank: int, size: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        json.dump(_losses_and_grads(rank, size), open(f"{out}/{rank}.json", "w"))
    finally:
        dist.destroy_process_group()


def _losses_and_grads(rank: int, size: int) -> dict:
    """Every loss of this process's slice, and the gradients of its inputs' global batch."""
    import torch.distributed as dist

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, generator=gen)
    b = torch.randn(8, 8, generator=gen)
    seq_a, seq_b = torch.randn(8, 4, 8, generator=gen), torch.randn(8, 4, 8, generator=gen)
    boxes = torch.rand(8, 5, 4, generator=gen) * 0.3 + 0.2
    tboxes = torch.rand(8, 3, 4, generator=gen) * 0.3 + 0.2
    logits = torch.randn(8, 5, 4, generator=gen)
    labels = torch.tensor([[0, 1, 2]] * 3 + [[0, -100, -100]] * 5)  # uneven box counts
    torch.manual_seed(0)
    protos = prototypes.Prototypes(in_width=8, prototypes=3, temperature=0.1, epsilon=0.05,
                                   iterations=3)
    rows = slice(rank * 8 // size, (rank + 1) * 8 // size)
    leaves = {k: v[rows].clone().requires_grad_(True)
              for k, v in dict(a=a, b=b, seq_a=seq_a, seq_b=seq_b, boxes=boxes).items()}
    losses = {
        "prototypes": protos(leaves["a"], leaves["b"]),
        "token_contrastive": alignment.token_contrastive(leaves["seq_a"], leaves["seq_b"],
                                                         temperature=0.1, normalize=True),
        "word_region_ot": alignment.word_region_ot(leaves["seq_a"], leaves["seq_b"], beta=0.5,
                                                   iterations=10, k=1),
        "set_loss": sets.set_loss(logits[rows], leaves["boxes"], labels[rows], tboxes[rows],
                                  class_weight=1.0, l1_weight=5.0, giou_weight=2.0,
                                  no_object_weight=0.1, format="cxcywh", ignore_index=-100),
    }
    out = {}
    for name, loss in losses.items():
        value = loss.detach().clone()
        if size > 1:
            dist.all_reduce(value)
        out[name] = value.item() / size  # what the trainer logs: the mean over processes
    total = sum(losses.values())
    total.backward()
    grads = {k: v.grad * 1 for k, v in leaves.items()}
    grads["protos"] = protos.weight.grad.clone()
    if size > 1:  # DDP averages parameter gradients; inputs' gradients are gathered
        dist.all_reduce(grads["protos"])
        grads["protos"] /= size
        for k in leaves:
            parts = [torch.empty_like(grads[k]) for _ in range(size)]
            dist.all_gather(parts, grads[k].contiguous())
            grads[k] = torch.cat(parts) / size
    out["grads"] = {k: v.reshape(-1).tolist() for k, v in grads.items()}
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_compute_the_losses_of_one(tmp_path):
    import torch.multiprocessing as mp

    # spawn, not fork: a forked child can hang on the thread pools of the torch ops the
    # parent ran in earlier tests
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    one = _losses_and_grads_single()
    for rank in (0, 1):
        got = json.load(open(tmp_path / f"{rank}.json"))
        for name in ("prototypes", "token_contrastive", "word_region_ot", "set_loss"):
            assert math.isclose(got[name], one[name], rel_tol=1e-5, abs_tol=1e-6), name
        for k, v in one["grads"].items():
            np.testing.assert_allclose(got["grads"][k], v, rtol=1e-4, atol=1e-6, err_msg=k)


def _losses_and_grads_single() -> dict:
    import torch.distributed as dist

    assert not dist.is_initialized()
    return _losses_and_grads(0, 1)
