"""PyTorch's ``F.interpolate`` resizes in numpy, with PyTorch's arithmetic, so that the runner
pre- and post-processes exactly as the PyTorch model does.

Both resize (C, H, W) planes separably, along x and then along y, as PyTorch does. Each pass
gathers whole rows and adds a few of them, weighted: the x pass runs on the planes transposed
(by OpenCV, whose transpose is vectorised, unlike numpy's copy of a transposed view), so that
it too gathers rows, and the y pass then gives the planes in their own layout.
"""
import functools

import cv2
import numpy as np

__all__ = ["resize_bicubic", "resize_bilinear_antialiased"]

# PyTorch's (and OpenCV's) bicubic convolution coefficient.
_CUBIC_A = -0.75


def _cached_taps(taps):
    """Taps computed once per pair of sizes (``functools.lru_cache``): a box's keypoint decoding
    spent a third of its time computing them. Read-only, as every call shares them."""

    @functools.lru_cache(maxsize=1024)
    def cached(in_size, out_size):
        indices, weights = taps(in_size, out_size)
        indices.setflags(write=False)
        weights.setflags(write=False)
        return indices, weights

    return functools.wraps(taps)(cached)


@_cached_taps
def _antialiased_bilinear_taps(in_size, out_size):
    """Source indices (out_size, taps) and normalised weights of PyTorch's antialiased
    bilinear resize along one axis (the kernel of PIL's bilinear filter), computed with
    PyTorch's float32 and float64 steps so that the weights are the same to the last bit.

    When shrinking by ``scale`` the triangle filter is widened to ``scale`` source pixels
    each side, which averages away what the smaller image cannot represent; when enlarging it
    is plain bilinear interpolation with half-pixel centres.
    """
    f32, f64 = np.float32, np.float64
    scale = f32(in_size) / f32(out_size)
    support = max(scale, f32(1))
    inv_scale = f32(1 / f64(scale)) if scale >= 1 else f32(1)
    centers = (f64(scale) * (np.arange(out_size) + 0.5)).astype(f32)
    # int64 truncation, as in PyTorch (operands are >= 0 after the max/min).
    first = np.maximum(((centers - support).astype(f64) + 0.5).astype(np.int64), 0)
    stop = np.minimum(((centers + support).astype(f64) + 0.5).astype(np.int64), in_size)
    indices = first[:, None] + np.arange((stop - first).max())
    offsets = ((indices.astype(f32) - centers[:, None]).astype(f64) + 0.5) * f64(inv_scale)
    weights = (1 - np.abs(offsets.astype(f32))).clip(0).astype(f32)
    weights[indices >= stop[:, None]] = 0
    # Normalised by their sum, accumulated in order in float32.
    total = np.zeros(out_size, f32)
    for k in range(weights.shape[1]):
        total += weights[:, k]
    weights /= total[:, None]
    return np.minimum(indices, in_size - 1), weights


@_cached_taps
def _bicubic_taps(in_size, out_size):
    """Source indices (out_size, 4) and weights of PyTorch's bicubic interpolation
    (``align_corners=False``, Keys' kernel with a = -0.75) along one axis, in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    start = np.floor(source)
    t = source - start
    a = np.float32(_CUBIC_A)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    # Pixels beyond the border repeat the border pixel.
    indices = np.clip(start.astype(np.int64)[:, None] + np.arange(-1, 3), 0, in_size - 1)
    return indices, weights.astype(np.float32)


def _along_axis_1(array, taps):
    """Along axis 1 of a 3-D array, each output index the weighted sum of a few source indices,
    added in PyTorch's order, in float32 (also from uint8), C-contiguous. Each gather copies
    whole rows of the last axis (``take``: indexing ``array[:, indices]`` gives a strided
    array)."""
    indices, weights = taps
    result = array.take(indices[:, 0], axis=1) * weights[:, 0, None]
    for k in range(1, indices.shape[1]):
        result += array.take(indices[:, k], axis=1) * weights[:, k, None]
    return result


def _resize(planes, height, width, taps):
    """(C, H, W) planes resized to (C, height, width), in float32: along x, then along y."""
    num_planes, rows, columns = planes.shape
    by_x = cv2.transpose(planes.reshape(num_planes * rows, columns))  # (x, (C, y))
    along_x = _along_axis_1(by_x[None], taps(columns, width))[0]  # (width, (C, y))
    by_y = cv2.transpose(along_x).reshape(num_planes, rows, width)
    return _along_axis_1(by_y, taps(rows, height))


def resize_bilinear_antialiased(planes, size):
    """(C, H, W) uint8 or float32 planes resized to ``size`` = (height, width), as
    ``F.interpolate(mode="bilinear", align_corners=False, antialias=True)`` resizes them:
    (C, height, width) float32, within 1e-4 of PyTorch's pixels (tested)."""
    return _resize(planes, *size, _antialiased_bilinear_taps)


def resize_bicubic(maps, height, width):
    """(K, S, S) float32 maps resized to (K, height, width) as
    ``F.interpolate(mode="bicubic", align_corners=False)`` resizes them."""
    return _resize(maps, height, width, _bicubic_taps)
