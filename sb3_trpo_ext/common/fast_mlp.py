"""
The one NumPy MLP, for plain MLP actors and critics where NumPy beats torch's per-call overhead, and the one flat
parameter layout (:class:`FlatLayout`) that its vectors, conjugate gradient's, the Fisher-vector products' and the
NumPy Adam's share (:func:`flat_grad` gives a gradient in it, :func:`set_flat_params` writes a vector back).

A *plain MLP* is a chain of ``Linear`` layers with activations from :data:`ACTIVATIONS` behind a
``FlattenExtractor`` on a flat ``Box`` observation space, or behind a ``CombinedExtractor`` that only flattens
(non-image) ``Box`` entries of a ``Dict`` space, which is the concatenation of those entries in the extractor's order
(:func:`mlp_layers` reads it off a policy, :func:`mlp_input_keys` the order, :func:`mlp_inputs` builds the input). Its
:class:`NumpyMlp` copy serves:

- rollouts: the actor and the critic, one forward per env step (:class:`~sb3_trpo_ext.common.rollouts.RolloutPolicy`);
- the critic fit: forward, backward and Adam on the flat parameter vector (:mod:`sb3_trpo_ext.common.critic`);
- the Fisher-vector product of an MLP actor: forward and reverse mode (:mod:`sb3_trpo_ext.common.fisher`).

Which parts use it is decided in one place, :func:`sb3_trpo_ext.common.backends.choose_backends`.

To support another activation, add it to :data:`ACTIVATIONS` (its forward, in place, and its derivative as a
function of its output); ``tests/test_fast_paths.py`` checks every entry against torch.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor
from threadpoolctl import ThreadpoolController
from torch import nn


@dataclass(frozen=True)
class Activation:
    """An elementwise activation in NumPy."""

    forward: Callable[[np.ndarray], object]
    """Apply the activation in place."""
    derivative: Callable[[np.ndarray], np.ndarray]
    """``f'(x)`` as a function of ``y = f(x)`` (the layer's output, which the passes keep)."""


ACTIVATIONS: dict[type[nn.Module], Activation] = {
    nn.Tanh: Activation(lambda h: np.tanh(h, out=h), lambda y: 1.0 - y * y),
    nn.ReLU: Activation(lambda h: np.maximum(h, 0.0, out=h), lambda y: y > 0),
}
"""The activations a plain MLP may use (``nn.Identity`` is no activation)."""

Layer = tuple[nn.Linear, Activation | None]


def mlp_layers(policy: ActorCriticPolicy, head: Literal["actor", "critic"]) -> list[Layer] | None:
    """
    The actor's or critic's layers as ``(linear, activation after it)`` pairs, or ``None`` when the network is not a
    plain MLP on flat observations.

    :param policy: the policy
    :param head: ``"actor"`` (up to the action head) or ``"critic"`` (up to the value head)
    :return: the layers, the last one being the head (no activation)
    """
    extractor = policy.pi_features_extractor if head == "actor" else policy.vf_features_extractor
    if not _only_flattens(extractor, policy.observation_space):
        return None
    mlp = policy.mlp_extractor
    body = getattr(mlp, "policy_net" if head == "actor" else "value_net", None)
    shared = getattr(mlp, "shared_net", None)
    if not isinstance(body, nn.Sequential) or (shared is not None and len(shared) > 0):
        return None
    layers: list[Layer] = []
    for module in body:
        if isinstance(module, nn.Linear):
            layers.append((module, None))
        elif type(module) is nn.Identity:
            continue
        elif type(module) in ACTIVATIONS and layers and layers[-1][1] is None:
            layers[-1] = (layers[-1][0], ACTIVATIONS[type(module)])
        else:
            return None
    output = policy.action_net if head == "actor" else policy.value_net
    if not isinstance(output, nn.Linear):
        return None
    layers.append((output, None))
    return layers


def _only_flattens(extractor: nn.Module, obs_space: spaces.Space) -> bool:
    """The features are the observation, flattened (a flat Box), or a concatenation of flattened Box entries."""
    if type(extractor) is FlattenExtractor:
        return isinstance(obs_space, spaces.Box) and len(obs_space.shape) == 1
    if type(extractor) is not CombinedExtractor or not isinstance(obs_space, spaces.Dict):
        return False
    return all(
        type(module) is nn.Flatten
        and isinstance(obs_space[key], spaces.Box)
        and not is_image_space(obs_space[key], check_channels=False)
        for key, module in extractor.extractors.items()
    )


@dataclass(frozen=True)
class MlpPlan:
    """
    What the NumPy paths run a policy with, read off it once per model (``mlp_plan``): its actor's and critic's
    layers where they are plain MLPs, and the order of a Dict observation's keys. The layers are the policy's own
    modules, so a ``NumpyMlp`` built from them sees the current weights.

    :param actor: the actor's layers (``mlp_layers``), ``None`` unless a plain MLP
    :param critic: the critic's layers, ``None`` unless a plain MLP
    :param input_keys: ``mlp_input_keys``
    """

    actor: list[Layer] | None
    critic: list[Layer] | None
    input_keys: list[str] | None


def mlp_plan(policy: ActorCriticPolicy) -> MlpPlan:
    """:param policy: the policy
    :return: its plan (float32 policies only: another dtype has no plain MLP here)"""
    float32 = all(p.dtype == th.float32 for p in policy.parameters())
    return MlpPlan(
        actor=mlp_layers(policy, "actor") if float32 else None,
        critic=mlp_layers(policy, "critic") if float32 else None,
        input_keys=mlp_input_keys(policy),
    )


def mlp_input_keys(policy: ActorCriticPolicy) -> list[str] | None:
    """
    :param policy: a policy whose actor or critic is a plain MLP
    :return: the Dict keys in the order the ``CombinedExtractor`` concatenates them (``None`` for a flat Box)
    """
    extractor = policy.pi_features_extractor
    return list(extractor.extractors) if isinstance(extractor, CombinedExtractor) else None


def mlp_inputs(observations: object, keys: list[str] | None) -> np.ndarray:
    """
    The input of a plain MLP: what its features extractor computes, as a float32 ``(batch, features)`` array.

    :param observations: a batch of observations (NumPy arrays or torch tensors; dicts of them for a Dict space)
    :param keys: output of :func:`mlp_input_keys`
    :return: the flattened (and, for a Dict, concatenated) observations
    """

    def as_array(x: object) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, th.Tensor) else np.asarray(x)

    if keys is None:
        x = as_array(observations)
        return x.astype(np.float32, copy=False).reshape(len(x), -1)
    parts = [as_array(observations[key]) for key in keys]  # type: ignore[index]
    n = len(parts[0])
    return np.concatenate([part.reshape(n, -1) for part in parts], axis=1).astype(np.float32, copy=False)


# ------------------------------------------------------------------ flat parameter vectors

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
    def of(cls, params: Sequence[th.Tensor | np.ndarray]) -> "FlatLayout":
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


def flat_grad(
    output: th.Tensor,
    params: Sequence[th.Tensor],
    retain_graph: bool = False,
    create_graph: bool = False,
) -> th.Tensor:
    """
    Gradient of a scalar with respect to ``params`` as one vector (zeros for parameters it does not depend on).

    :param output: a scalar tensor
    :param params: the parameters to differentiate with respect to
    :param retain_graph: keep the graph for another backward pass
    :param create_graph: build the graph of the gradient (for second derivatives)
    :return: a 1-D tensor
    """
    grads = th.autograd.grad(
        output, params, retain_graph=retain_graph or create_graph, create_graph=create_graph, allow_unused=True
    )
    return th.cat([(th.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)])


_Views = list[tuple[np.ndarray, np.ndarray | None]]


class NumpyMlp:
    """
    A float32 NumPy copy of a plain MLP, its parameters in one flat vector (each layer's weight, shape
    ``(out, in)`` as torch stores it, then its bias), with the forward pass and both derivatives.

    Parameter-shaped vectors (gradients, tangents) use the same flat layout, in the order of :attr:`params`.

    :param layers: output of :func:`mlp_layers`
    """

    def __init__(self, layers: list[Layer]) -> None:
        self.params = [p for linear, _ in layers for p in (linear.weight, linear.bias) if p is not None]
        """The torch parameters, in the order of the flat vector."""
        self.layout = FlatLayout.of(self.params)
        """The flat layout of :attr:`params`."""
        self.flat = np.concatenate([p.detach().cpu().numpy().reshape(-1) for p in self.params]).astype(np.float32)
        self._has_bias = [linear.bias is not None for linear, _ in layers]
        self.activations = [activation for _, activation in layers]
        self.layers = self.views(self.flat)
        """``(weight, bias)`` of each layer, views into :attr:`flat`."""
        self._forward_layers = [
            (weight.T, bias, act) for (weight, bias), act in zip(self.layers, self.activations, strict=True)
        ]

    def views(self, flat: np.ndarray) -> _Views:
        """
        :param flat: a vector in the flat parameter layout
        :return: its ``(weight, bias)`` views per layer (bias ``None`` for a layer without one)
        """
        parts = iter(self.layout.split(flat))
        return [(next(parts), next(parts) if has_bias else None) for has_bias in self._has_bias]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """
        :param x: a batch of flat observations
        :return: the network's output
        """
        return self.forward(x, keep=False)[-1]

    def forward(self, x: np.ndarray, keep: bool = True) -> list[np.ndarray]:
        """
        :param x: a batch of flat observations
        :param keep: keep every layer's output (what :meth:`backward` and :meth:`jvp` need)
        :return: the input (as float32, flattened) and every layer's output after its activation, the last entry being
            the network's output (only that entry when not ``keep``)
        """
        h = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        outputs = [h]
        for weight_t, bias, activation in self._forward_layers:
            h = h @ weight_t
            if bias is not None:
                h += bias
            if activation is not None:
                activation.forward(h)
            if keep:
                outputs.append(h)
        return outputs if keep else [h]

    def backward(self, outputs: list[np.ndarray], grad_output: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """
        Reverse mode: ``J^T u``, the gradient of ``sum(u * output)`` with respect to the parameters.

        :param outputs: output of :meth:`forward`
        :param grad_output: ``u``, shape ``(batch, out_features)``
        :param out: where to write the result (default: a new array)
        :return: the gradient, in the flat parameter layout
        """
        grad = np.empty_like(self.flat) if out is None else out
        delta = grad_output
        for index, (grad_weight, grad_bias) in reversed(list(enumerate(self.views(grad)))):
            activation = self.activations[index]
            if activation is not None:
                delta = delta * activation.derivative(outputs[index + 1])
            np.matmul(delta.T, outputs[index], out=grad_weight)
            if grad_bias is not None:
                np.sum(delta, axis=0, out=grad_bias)
            if index > 0:
                delta = delta @ self.layers[index][0]
        return grad

    def jvp(self, outputs: list[np.ndarray], tangent: np.ndarray) -> np.ndarray:
        """
        Forward mode: ``J t``, the change of the output for a parameter change ``t``.

        :param outputs: output of :meth:`forward`
        :param tangent: ``t``, in the flat parameter layout
        :return: ``J t``, shape ``(batch, out_features)``
        """
        d_hidden: np.ndarray | None = None
        for index, (d_weight, d_bias) in enumerate(self.views(tangent)):
            d_out = outputs[index] @ d_weight.T
            if d_bias is not None:
                d_out += d_bias
            if d_hidden is not None:
                d_out += d_hidden @ self.layers[index][0].T
            activation = self.activations[index]
            d_hidden = d_out if activation is None else d_out * activation.derivative(outputs[index + 1])
        assert d_hidden is not None
        return d_hidden

    def write_back(self) -> None:
        """Copy :attr:`flat` into the torch parameters."""
        set_flat_params(self.params, self.flat)


_controller: ThreadpoolController | None = None


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit NumPy's BLAS to one thread (multi-threaded BLAS only slows matrices this small)."""
    global _controller
    if _controller is None:  # inspecting the loaded libraries is slow: once per process
        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield


def side_by_side(first: list[Layer], second: list[Layer]) -> list[Layer] | None:
    """
    Two MLPs on the same input as one, with block-diagonal layers: its output is ``[first(x), second(x)]``, so a
    rollout step evaluates the actor and the critic in one :class:`NumpyMlp` forward (3 matrix products instead of
    6 on a 64x64 MLP policy; the per-call overhead, not arithmetic, is what costs at batch size 1).

    :param first: output of :func:`mlp_layers`
    :param second: output of :func:`mlp_layers`, on the same input
    :return: the combined layers, or ``None`` when the two differ in depth or activations
    """
    if len(first) != len(second) or any(a[1] is not b[1] for a, b in zip(first, second, strict=True)):
        return None
    layers: list[Layer] = []
    for index, ((linear_a, activation), (linear_b, _)) in enumerate(zip(first, second, strict=True)):
        out_a, out_b = linear_a.out_features, linear_b.out_features
        in_a, in_b = linear_a.in_features, linear_b.in_features
        shared_input = index == 0
        combined = nn.utils.skip_init(nn.Linear, in_a if shared_input else in_a + in_b, out_a + out_b)  # no RNG draw
        with th.no_grad():
            combined.weight.zero_()
            combined.weight[:out_a, :in_a] = linear_a.weight
            if shared_input:
                combined.weight[out_a:, :] = linear_b.weight
            else:
                combined.weight[out_a:, in_a:] = linear_b.weight
            combined.bias.copy_(th.cat([_bias(linear_a), _bias(linear_b)]))
        layers.append((combined, activation))
    return layers


def _bias(linear: nn.Linear) -> th.Tensor:
    return linear.bias.detach() if linear.bias is not None else th.zeros(linear.out_features)
