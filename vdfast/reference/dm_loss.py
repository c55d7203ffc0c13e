"""Distribution-matching loss, plain PyTorch: the single truth for ``vdfast.ops.dm_loss``."""
import torch


def class_means(feat: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per-class mean rows of ``feat`` [N, D] and a [num_classes] bool mask of classes present."""
    sums = feat.new_zeros(num_classes, feat.shape[1]).index_add(0, labels, feat)
    counts = torch.bincount(labels, minlength=num_classes)
    return sums / counts.clamp_min(1).to(feat.dtype)[:, None], counts > 0


def dm_loss(real_feat: torch.Tensor, real_labels: torch.Tensor, syn_feat: torch.Tensor,
            syn_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """sum_c || mean(real_feat[real_labels == c]) - mean(syn_feat[syn_labels == c]) ||^2 over the
    classes present on both sides. Differentiable any number of times."""
    mr, pr = class_means(real_feat, real_labels, num_classes)
    ms, ps = class_means(syn_feat, syn_labels, num_classes)
    both = (pr & ps).to(real_feat.dtype)
    return (((mr - ms) ** 2).sum(1) * both).sum()


def dm_loss_loop(real_feat, real_labels, syn_feat, syn_labels, num_classes):
    """The same loss, one class at a time, as in the published DM code: an independent check."""
    loss = real_feat.new_zeros(())
    for c in range(num_classes):
        r, s = real_feat[real_labels == c], syn_feat[syn_labels == c]
        if len(r) and len(s):
            loss = loss + ((r.mean(0) - s.mean(0)) ** 2).sum()
    return loss
