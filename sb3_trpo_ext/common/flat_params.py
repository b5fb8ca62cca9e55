"""
:class:`FlatLayout`: where each parameter of a list lives in one flat vector (in order, each flattened in its own
row-major order). The one definition of the layout that the conjugate gradient's vectors, the Fisher-vector
products, the NumPy MLP and the NumPy Adam all use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch as th

Vector = TypeVar("Vector", np.ndarray, th.Tensor)
"""A flat vector or its parts: NumPy arrays or tensors (the parts are of the vector's kind)."""


@dataclass(frozen=True)
class FlatLayout:
    """
    The flat layout of a list of parameters.

    :param shapes: each parameter's shape, in order
    :param slices: each parameter's place in the flat vector
    """

    shapes: tuple[tuple[int, ...], ...]
    slices: tuple[slice, ...]

    @classmethod
    def of(cls, params: Sequence[th.Tensor | np.ndarray]) -> FlatLayout:
        """:return: the layout of ``params`` (torch parameters or arrays), one after the other"""
        shapes, slices, offset = [], [], 0
        for param in params:
            size = int(np.prod(param.shape, dtype=np.int64))
            shapes.append(tuple(param.shape))
            slices.append(slice(offset, offset + size))
            offset += size
        return cls(tuple(shapes), tuple(slices))

    @property
    def size(self) -> int:
        """The flat vector's length."""
        return self.slices[-1].stop if self.slices else 0

    def split(self, flat: Vector) -> list[Vector]:
        """
        :param flat: a vector in this layout (a NumPy array or a tensor)
        :return: each parameter's part, shaped like the parameter: views into ``flat``
        :raises ValueError: when ``flat`` has another length
        """
        if flat.shape != (self.size,):
            raise ValueError(f"flat vector has shape {tuple(flat.shape)} but the parameters need ({self.size},)")
        return [flat[part].reshape(shape) for part, shape in zip(self.slices, self.shapes, strict=True)]

    def slots(self, params: Sequence[th.Tensor]) -> dict[int, slice]:
        """:return: each of ``params`` (the list this layout was made of) by ``id``, to its place"""
        return {id(param): part for param, part in zip(params, self.slices, strict=True)}


def set_flat_params(params: Sequence[th.Tensor], flat: th.Tensor | np.ndarray) -> None:
    """
    Write a flat vector into the parameters, in place, without recording gradients.

    :param params: the parameters to overwrite
    :param flat: a 1-D tensor or NumPy array in their :class:`FlatLayout`
    :raises ValueError: when ``flat`` has another length
    """
    parts: list[Any] = FlatLayout.of(params).split(flat)  # type: ignore[type-var]
    with th.no_grad():
        for param, part in zip(params, parts, strict=True):
            param.copy_(th.as_tensor(part))
