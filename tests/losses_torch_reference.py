"""Independent PyTorch implementations of the distillation losses, for parity tests.

Written from the papers' equations in the idiom of the public reference code
(RepDistiller for AT/SP/PKT/RKD/NST/VID/FT/AB/FSP/CC/CRD, mdistiller for DKD, the
DIST and logit-standardisation authors' code), on NCHW tensors as PyTorch code has
them. Each function takes the NHWC/[batch, ...] tensors the kdjax losses take (a
list of them, one per stage, for the multi-stage losses, combined as RepDistiller's
``train_student.py`` combines them) and returns what the kdjax loss returns (a
per-example vector or a scalar). Importing
this module imports torch: use it only after ``pytest.importorskip("torch")``.

Norms use ``torch.linalg.vector_norm`` (whose gradient at 0 is 0) where the
original code writes ``x.pow(2).sum().sqrt()`` (NaN gradient at 0), so the
degenerate-batch tests compare finite gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _nchw(x):
    return x.permute(0, 3, 1, 2)


def _pool_to_common(a, b):
    """Both NCHW maps to the smaller height and width: RepDistiller's pooling of the
    larger map (to ``(H, H)``, the same on square maps)."""
    height, width = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    return F.adaptive_avg_pool2d(a, (height, width)), F.adaptive_avg_pool2d(b, (height, width))


def _stages(x):
    """A list of per-stage tensors from one tensor or a list (RepDistiller's ``g_s``)."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


def attention_transfer(s_maps, t_maps, p=2):
    """RepDistiller's ``Attention`` per stage, summed as ``train_student.py`` sums it."""

    def at(f):
        return F.normalize(f.abs().pow(p).mean(1).reshape(f.size(0), -1))

    def stage(s_map, t_map):
        s, t = _pool_to_common(_nchw(s_map), _nchw(t_map))
        return (at(s) - at(t)).pow(2).mean(1)

    return sum(stage(s, t) for s, t in zip(_stages(s_maps), _stages(t_maps), strict=True))


def nst(s_maps, t_maps):
    """RepDistiller's ``NSTLoss`` (full loss) per stage, summed."""

    def poly_kernel(a, b):
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2).flatten(1).mean(1)

    def stage(s_map, t_map):
        s, t = _pool_to_common(_nchw(s_map), _nchw(t_map))
        s = F.normalize(s.reshape(s.shape[0], s.shape[1], -1), dim=2)
        t = F.normalize(t.reshape(t.shape[0], t.shape[1], -1), dim=2)
        return poly_kernel(t, t) + poly_kernel(s, s) - 2 * poly_kernel(s, t)

    return sum(stage(s, t) for s, t in zip(_stages(s_maps), _stages(t_maps), strict=True))


def vid(pred_means, targets, log_scales, eps=1e-5):
    """RepDistiller's ``VIDLoss`` after its regressor, per stage (the larger map of a
    stage pooled to the smaller, on NCHW maps), summed."""

    def stage(pred_mean, target, log_scale):
        if pred_mean.dim() == 4:
            pred_mean, target = _pool_to_common(_nchw(pred_mean), _nchw(target))
        pred_var = torch.log(1.0 + torch.exp(log_scale)) + eps
        pred_var = pred_var.view(1, -1, *[1] * (pred_mean.dim() - 2))
        neg_log_prob = 0.5 * ((pred_mean - target) ** 2 / pred_var + torch.log(pred_var))
        return neg_log_prob.flatten(1).mean(1)

    stages = zip(_stages(pred_means), _stages(targets), _stages(log_scales), strict=True)
    return sum(stage(*arguments) for arguments in stages)


def factor_transfer(factor_s, factor_t, p1=2, p2=1):
    """RepDistiller's ``FactorTransfer`` (p2 = 1), kept per example."""

    def factor(f):
        return F.normalize(f.pow(p1).mean(1).view(f.size(0), -1))

    f_s, f_t = _pool_to_common(_nchw(factor_s), _nchw(factor_t))
    assert p2 == 1
    return (factor(f_s) - factor(f_t)).abs().mean(1)


def activation_boundary(s_maps, t_maps, margin=1.0):
    """RepDistiller's ``ABLoss`` with each stage's sum kept per example (it sums over
    the batch, then divides by its size)."""
    g_s, g_t = _stages(s_maps), _stages(t_maps)
    weights = [2 ** (i - len(g_s) + 1) for i in range(len(g_s))]

    def criterion_alternative_l2(source, target):
        loss = (source + margin) ** 2 * ((source > -margin) & (target <= 0)).float() + (
            source - margin
        ) ** 2 * ((source <= margin) & (target > 0)).float()
        return torch.abs(loss).flatten(1).sum(1)

    losses = [w * criterion_alternative_l2(s, t) for w, s, t in zip(weights, g_s, g_t, strict=True)]
    return sum(loss / 1000 * 3 for loss in losses)


def fsp(s_maps, t_maps):
    """RepDistiller's ``FSP`` with each pair's mean kept per example, summed over pairs."""

    def compute_fsp(g):
        fsp_list = []
        for i in range(len(g) - 1):
            bot, top = _pool_to_common(_nchw(g[i]), _nchw(g[i + 1]))
            bot = bot.unsqueeze(1).flatten(3)
            top = top.unsqueeze(2).flatten(3)
            fsp_list.append((bot * top).mean(-1))
        return fsp_list

    pairs = zip(compute_fsp(s_maps), compute_fsp(t_maps), strict=True)
    return sum((s - t).pow(2).flatten(1).mean(1) for s, t in pairs)


def similarity_preserving(s_feat, t_feat):
    bsz = s_feat.shape[0]
    f_s, f_t = s_feat.reshape(bsz, -1), t_feat.reshape(bsz, -1)
    g_s = F.normalize(torch.mm(f_s, f_s.t()))
    g_t = F.normalize(torch.mm(f_t, f_t.t()))
    return ((g_t - g_s) ** 2).sum() / (bsz * bsz)


def pkt(s_feat, t_feat, eps=1e-7):
    def conditional(x):
        x = x.reshape(x.shape[0], -1)
        x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)
        similarity = (x @ x.t() + 1.0) / 2.0
        return similarity / similarity.sum(dim=1, keepdim=True)

    model, target = conditional(s_feat), conditional(t_feat)
    return torch.mean(target * torch.log((target + eps) / (model + eps)))


def _pdist(e, eps=1e-12):
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps).sqrt()
    res = res.clone()
    res[range(len(e)), range(len(e))] = 0
    return res


def rkd(s_feat, t_feat, distance_weight=25.0, angle_weight=50.0):
    student = s_feat.reshape(s_feat.shape[0], -1)
    teacher = t_feat.reshape(t_feat.shape[0], -1)
    t_d = _pdist(teacher)
    t_d = t_d / t_d[t_d > 0].mean()
    d = _pdist(student)
    d = d / d[d > 0].mean()
    loss_d = F.smooth_l1_loss(d, t_d)

    def angles(x):
        normed = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
        return torch.bmm(normed, normed.transpose(1, 2)).reshape(-1)

    loss_a = F.smooth_l1_loss(angles(student), angles(teacher))
    return distance_weight * loss_d + angle_weight * loss_a


def correlation_congruence(s_emb, t_emb, gamma=0.4, order=2):
    def correlation(x):
        x = x.reshape(x.shape[0], -1)
        prod = x @ x.t()
        total = torch.zeros_like(prod)
        for p in range(order + 1):
            total = total + (2 * gamma) ** p / math.factorial(p) * prod.pow(p)
        return math.exp(-2 * gamma) * total

    batch = s_emb.shape[0]
    return torch.sum((correlation(t_emb) - correlation(s_emb)) ** 2) / batch**2


def repdistiller_correlation(f_s, f_t):
    """RepDistiller's ``Correlation`` ("CC")."""
    delta = torch.abs(f_s.flatten(1) - f_t.flatten(1))
    return torch.mean((delta[:-1] * delta[1:]).sum(1))


def dkd(logits_student, logits_teacher, target, alpha=1.0, beta=8.0, temperature=4.0):
    """mdistiller's ``dkd_loss`` with ``reduction='none'`` kept per example."""
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = ~gt_mask

    def cat_mask(t):
        return torch.cat([(t * gt_mask).sum(1, keepdim=True), (t * other_mask).sum(1, True)], 1)

    pred_student = cat_mask(F.softmax(logits_student / temperature, dim=1))
    pred_teacher = cat_mask(F.softmax(logits_teacher / temperature, dim=1))
    tckd = F.kl_div(torch.log(pred_student), pred_teacher, reduction="none").sum(1)
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="none").sum(1)
    return temperature**2 * (alpha * tckd + beta * nckd)


def dist(z_s, z_t, beta=1.0, gamma=1.0, tau=1.0, eps=1e-8):
    def pearson(a, b):
        a = a - a.mean(1, keepdim=True)
        b = b - b.mean(1, keepdim=True)
        norms = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
        return (a * b).sum(1) / (norms + eps)

    y_s, y_t = (z_s / tau).softmax(dim=1), (z_t / tau).softmax(dim=1)
    inter = 1 - pearson(y_s, y_t).mean()
    intra = 1 - pearson(y_s.t(), y_t.t()).mean()
    return tau**2 * (beta * inter + gamma * intra)


def standardized_kl(logits_student, logits_teacher, temperature):
    """Sun et al.'s ``kd_loss(..., logit_stand=True, reduce=False)``."""

    def normalize(logit):
        mean = logit.mean(dim=-1, keepdim=True)
        centered = logit - mean
        std = torch.linalg.vector_norm(centered, dim=-1, keepdim=True) / math.sqrt(
            logit.shape[-1] - 1
        )  # == logit.std(dim=-1, keepdim=True), without its NaN gradient at 0
        return centered / (1e-7 + std)

    log_pred_student = F.log_softmax(normalize(logits_student) / temperature, dim=1)
    pred_teacher = F.softmax(normalize(logits_teacher) / temperature, dim=1)
    kl = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1)
    return kl * temperature**2


def crd(s_emb, t_emb, idx, memory_student, memory_teacher, z_student, z_teacher, T, momentum):
    """RepDistiller's ContrastMemory + 2 × ContrastLoss with given sample indices.

    ``idx`` is ``[batch, K + 1]`` with the positives in column 0. Returns the loss, the
    two normalisers used and the two updated memories.
    """
    batch, k_plus_1 = idx.shape
    n_data, dim = memory_student.shape
    weight_t = torch.index_select(memory_teacher, 0, idx.view(-1)).detach()
    out_s = torch.exp(torch.bmm(weight_t.view(batch, k_plus_1, dim), s_emb.view(batch, dim, 1)) / T)
    weight_s = torch.index_select(memory_student, 0, idx.view(-1)).detach()
    out_t = torch.exp(torch.bmm(weight_s.view(batch, k_plus_1, dim), t_emb.view(batch, dim, 1)) / T)
    if z_student < 0:
        z_student = (out_s.mean() * n_data).item()
    if z_teacher < 0:
        z_teacher = (out_t.mean() * n_data).item()
    out_s, out_t = out_s / z_student, out_t / z_teacher

    def contrast_loss(x, eps=1e-7):
        x = x.squeeze(2)
        m = x.size(1) - 1
        pn = 1 / float(n_data)
        p_pos = x[:, 0]
        log_d1 = torch.log(p_pos / (p_pos + m * pn + eps))
        p_neg = x[:, 1:]
        log_d0 = torch.log((m * pn) / (p_neg + m * pn + eps))
        return -(log_d1.sum() + log_d0.sum()) / batch

    loss = contrast_loss(out_s) + contrast_loss(out_t)
    with torch.no_grad():
        positives = idx[:, 0]
        new_memories = []
        for memory, emb in ((memory_student, s_emb), (memory_teacher, t_emb)):
            mixed = memory[positives] * momentum + emb * (1 - momentum)
            updated = memory.clone()
            updated[positives] = mixed / mixed.pow(2).sum(1, keepdim=True).sqrt()
            new_memories.append(updated)
    return loss, z_student, z_teacher, new_memories[0], new_memories[1]
