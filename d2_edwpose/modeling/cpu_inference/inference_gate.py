"""Where the CPU rewrites take their own path."""

import torch

from ...compat import cpu_autocast_enabled

__all__ = ["is_cpu_float32_inference"]


def is_cpu_float32_inference(x: torch.Tensor) -> bool:
    """Where the CPU rewrites take their own path: eager (not tracing), no autograd, no
    autocast, on a float32 CPU tensor. Elsewhere they run the module they replaced (the EDWConv
    split: its plain sum of convs), so that an optimized model still exports, trains its
    remaining parameters and runs autocast."""
    return (
        not torch.jit.is_tracing()
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not cpu_autocast_enabled()
    )
