"""The value tests and the error of every config check: one wording for every key."""

import math

__all__ = ["check_config_value", "is_finite_number", "is_int"]


def is_int(value) -> bool:
    """An int, not a bool (which Python, YAML and JSON would let pass as 0 or 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """A finite int or float, not a bool."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def check_config_value(key, value, valid, expected):
    """Raise ValueError naming ``key``, its ``value`` and what is ``expected`` unless ``valid``."""
    if not valid:
        raise ValueError(f"{key}={value!r} is invalid: expected {expected}")
