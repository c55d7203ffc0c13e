"""Static-dynamic integrator, the literal way: repeat the still image over time, concatenate the
one-channel dynamic memory, apply one 3x3x3 convolution (padding 1). The truth every fast path of
:func:`vdfast.ops.blend_static_dynamic` is tested against.
"""
import torch
import torch.nn.functional as F


def blend_static_dynamic(static: torch.Tensor, dynamic: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None, static_idx: torch.Tensor,
                         dynamic_idx: torch.Tensor) -> torch.Tensor:
    """static [Ns, C, H, W], dynamic [Nd, T, 1, H, W], weight [C_out, C+1, 3, 3, 3], bias [C_out],
    static_idx / dynamic_idx int64 [N]  ->  videos [N, C_out, T, H, W]."""
    s = static[static_idx]                                  # [N, C, H, W]
    d = dynamic[dynamic_idx]                                # [N, T, 1, H, W]
    T = d.shape[1]
    s = s.unsqueeze(2).expand(-1, -1, T, -1, -1)            # [N, C, T, H, W]
    x = torch.cat([s, d.permute(0, 2, 1, 3, 4)], dim=1)     # [N, C+1, T, H, W]
    return F.conv3d(x, weight, bias, padding=1)
