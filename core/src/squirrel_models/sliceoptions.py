"""The ``slices`` and ``slice_*`` options of the durable budget backends, and their checks.

Apart from :mod:`squirrel_models.slices` (the sliced budget itself, which backends import when
one is created) so that a backend plugin's options, which its entry point registers, cost
neither that module nor what it imports.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from .errors import ConfigError

__all__ = ["SliceFields", "SliceOptions", "slice_count", "slice_fraction", "slice_seconds", "slices_flag"]


def slices_flag(instance: Any, attribute: attrs.Attribute[Any], value: bool) -> None:
    """An attrs validator: ``slices`` is true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}", field=attribute.name)


def slice_fraction(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or not 0 < value <= 1):
        raise ConfigError(f"must be a number > 0 and <= 1, got {value!r}", field=attribute.name)


def slice_seconds(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or not 0 < value <= 86400):
        raise ConfigError(f"must be a number of seconds > 0 and <= 86400, got {value!r}",
                          field=attribute.name)


def slice_count(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise ConfigError(f"must be a whole number from 1 to 1,000,000, got {value!r}",
                          field=attribute.name)


@attrs.frozen
class SliceOptions:
    """How slices are sized and kept (the ``slice_*`` options of a durable backend)."""

    flush_s: float = attrs.field(default=0.2, validator=slice_seconds)
    lease_s: float = attrs.field(default=30.0, validator=slice_seconds)
    requests: int = attrs.field(default=64, validator=slice_count)
    fraction: float = attrs.field(default=0.25, validator=slice_fraction)

    def __attrs_post_init__(self) -> None:
        if self.lease_s < 4 * self.flush_s:
            raise ConfigError(f"must be at least 4 x slice_flush_s ({4 * self.flush_s:g} s), "
                              f"got {self.lease_s!r}: every flush renews the lease",
                              field="slice_lease_s")



@attrs.frozen(kw_only=True)
class SliceFields:
    """The ``slices`` and ``slice_*`` options every durable backend's options share (their base
    class): whether slices are on, and their :class:`SliceOptions`, checked at load."""

    slices: bool = attrs.field(default=False, validator=slices_flag)
    slice_flush_s: float = attrs.field(default=0.2, validator=slice_seconds)
    slice_lease_s: float = attrs.field(default=30.0, validator=slice_seconds)
    slice_requests: int = attrs.field(default=64, validator=slice_count)
    slice_fraction: float = attrs.field(default=0.25, validator=slice_fraction)

    def __attrs_post_init__(self) -> None:
        self.slice_options()  # lease vs flush interval
        if not self.slices:
            # Accepted silently, a slice_* setting would not do what it says.
            for field in attrs.fields(SliceFields):
                if field.name != "slices" and getattr(self, field.name) != field.default:
                    raise ConfigError("has no effect unless slices = true: set that too, or "
                                      "remove this option", field=field.name)

    def slice_options(self) -> SliceOptions:
        return SliceOptions(self.slice_flush_s, self.slice_lease_s, self.slice_requests,
                            self.slice_fraction)
