"""Transposed convs as a matrix product: the keypoint heads' heatmap predictor runs as one
(pixels, C_in) x (C_in, C_out * kh * kw) product and a col2im sum (``F.fold``), which is faster
on CPU than oneDNN's transposed conv for these shapes (docs/speed.md)."""

import torch
from torch import nn
from torch.nn import functional as F

from . import is_cpu_float32_inference
from .module_replacement import Rewritten, replace_modules

__all__ = ["GemmConvTranspose2d", "gemm_conv_transpose", "conv_transposes_as_gemm"]


class GemmConvTranspose2d(Rewritten, nn.Module):
    """A transposed convolution computed as one matrix product whose columns are then summed
    into the output by ``F.fold`` (col2im). Outside
    :func:`~d2_edwpose.modeling.cpu_inference.is_cpu_float32_inference`, for empty or unbatched
    inputs and with ``output_size`` the transposed conv runs as it is. The output is NCHW."""

    def __init__(self, deconv: nn.ConvTranspose2d):
        super().__init__()
        self.deconv = deconv
        self.make_weight_contiguous()

    def make_weight_contiguous(self):
        """Make (C_in, C_out * kh * kw) a view of the weight; ``model.to(memory_format=
        torch.channels_last)`` makes it channels-last again."""
        weight = self.deconv.weight
        if not weight.is_contiguous():
            self.deconv.weight = nn.Parameter(weight.detach().contiguous(), weight.requires_grad)

    def forward(self, x, output_size=None):
        deconv = self.deconv
        if (
            output_size is not None
            or x.dim() != 4
            or x.shape[0] == 0
            or not is_cpu_float32_inference(x)
        ):
            return deconv(x, output_size)
        n, in_channels, height, width = x.shape
        output_size = [
            (size - 1) * stride - 2 * pad + dilation * (kernel - 1) + extra + 1
            for size, stride, pad, dilation, kernel, extra in zip(
                (height, width),
                deconv.stride,
                deconv.padding,
                deconv.dilation,
                deconv.kernel_size,
                deconv.output_padding,
            )
        ]
        columns = torch.mm(
            x.permute(0, 2, 3, 1).reshape(n * height * width, in_channels),
            deconv.weight.reshape(in_channels, -1),
        )
        out = F.fold(
            columns.view(n, height * width, -1).transpose(1, 2),
            output_size,
            deconv.kernel_size,
            dilation=deconv.dilation,
            padding=deconv.padding,
            stride=deconv.stride,
        )
        if deconv.bias is not None:
            out += deconv.bias.view(-1, 1, 1)
        return out


def gemm_conv_transpose(module):
    """The :class:`GemmConvTranspose2d` of a transposed conv that col2im can compute, else
    None."""
    if (
        type(module) is nn.ConvTranspose2d
        and module.groups == 1
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
        # PyTorch also allows output_padding < dilation; col2im only < stride.
        and all(extra < stride for extra, stride in zip(module.output_padding, module.stride))
    ):
        return GemmConvTranspose2d(module)
    return None


def conv_transposes_as_gemm(model: nn.Module) -> int:
    """Run the transposed convs of ``model`` as matrix products; returns how many were
    replaced. Those replaced by an earlier call get their weight made contiguous again (the
    channels-last rewrite, which runs before, changes it)."""
    for module in model.modules():
        if isinstance(module, GemmConvTranspose2d):
            module.make_weight_contiguous()
    return replace_modules(model, gemm_conv_transpose)
