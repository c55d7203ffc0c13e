"""MTT's trajectory-matching loss, plain PyTorch: the single truth for ``vdfast.ops.trajectory_loss``."""
import torch


def trajectory_loss(student: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||student - target||^2 / ||start - target||^2``. Differentiable any number of times."""
    return ((student - target) ** 2).sum() / ((start - target) ** 2).sum()
