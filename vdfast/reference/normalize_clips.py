"""Clip normalisation, plain PyTorch: the single truth for ``vdfast.ops.normalize_clips``."""
import torch


def normalize_clips(clips: torch.Tensor, mean, std, standardize: bool = False,
                    out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[N, T, H, W, C]`` -> ``[N, C, T, H, W]`` ``(x / 255 - mean[c]) / std[c]``; with
    ``standardize``, then ``(y - y.mean()) / y.std()`` over the whole batch (``std`` unbiased, as
    ``Tensor.std()``). Computed in float64 for a float64 ``out_dtype``, else in float32."""
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    m = torch.as_tensor(mean, dtype=work, device=clips.device).view(1, -1, 1, 1, 1)
    s = torch.as_tensor(std, dtype=work, device=clips.device).view(1, -1, 1, 1, 1)
    y = (clips.permute(0, 4, 1, 2, 3).to(work) / 255 - m) / s
    if standardize:
        y = (y - y.mean()) / y.std()
    return y.to(out_dtype).contiguous()
