"""DC's gradient-matching distance, plain PyTorch: the single truth for ``vdfast.ops.gradient_match``."""
import torch


def gradient_match(real_grads, syn_grads, eps: float = 1e-6) -> torch.Tensor:
    """``sum_layers sum_o (1 - <r_o, s_o> / (||r_o|| ||s_o|| + eps))`` with each tensor viewed as
    ``(out, rest)``; tensors of fewer than 2 dims (biases) contribute 0. As in the published DC
    code, ``eps`` is added to the product of the norms. Differentiable any number of times."""
    loss = syn_grads[0].new_zeros(()) if len(syn_grads) else torch.zeros(())
    for gr, gs in zip(real_grads, syn_grads):
        if gr.dim() < 2:
            continue
        r, s = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
        cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + eps)
        loss = loss + (1 - cos).sum()
    return loss
