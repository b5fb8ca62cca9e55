"""
Fast paths for the common case of plain MLP policies (``MlpPolicy`` on a flat ``Box`` observation space).

Small networks on the CPU spend most of their time in framework overhead, not arithmetic. When a policy's actor or
critic is a chain of ``Linear`` layers with ``Tanh`` / ``ReLU`` / ``Identity`` activations behind a
``FlattenExtractor``, we:

- run the actor in NumPy during rollouts (:class:`NumpyMlp`, one call per env step);
- compute the critic's regression gradient by hand (:func:`mse_gradients`) instead of through autograd.

Anything else falls back to the policy's own modules. :func:`mlp_layers` decides.
"""

from typing import Literal

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn

Activation = Literal["tanh", "relu", "identity"]
_ACTIVATIONS: dict[type[nn.Module], Activation] = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Identity: "identity"}


def mlp_layers(policy: ActorCriticPolicy, head: Literal["actor", "critic"]) -> list[tuple[nn.Linear, Activation]] | None:
    """
    The actor's or critic's layers as ``(linear, activation after it)`` pairs, or ``None`` when the network is not a
    plain MLP on flat observations.

    :param policy: the policy
    :param head: ``"actor"`` (up to the action head) or ``"critic"`` (up to the value head)
    :return: the layers, the last one being the head with activation ``"identity"``
    """
    obs_space = policy.observation_space
    if not (isinstance(obs_space, spaces.Box) and len(obs_space.shape) == 1):
        return None
    extractor = policy.pi_features_extractor if head == "actor" else policy.vf_features_extractor
    if type(extractor) is not FlattenExtractor:
        return None
    mlp = policy.mlp_extractor
    body = getattr(mlp, "policy_net" if head == "actor" else "value_net", None)
    shared = getattr(mlp, "shared_net", None)
    if not isinstance(body, nn.Sequential) or (shared is not None and len(shared) > 0):
        return None
    layers: list[tuple[nn.Linear, Activation]] = []
    for module in body:
        if isinstance(module, nn.Linear):
            layers.append((module, "identity"))
        elif type(module) in _ACTIVATIONS and layers and layers[-1][1] == "identity":
            layers[-1] = (layers[-1][0], _ACTIVATIONS[type(module)])
        else:
            return None
    output = policy.action_net if head == "actor" else policy.value_net
    if not isinstance(output, nn.Linear):
        return None
    layers.append((output, "identity"))
    return layers


class NumpyMlp:
    """
    A frozen NumPy copy of an MLP, for fast single-step forwards during a rollout.

    :param layers: output of :func:`mlp_layers`
    """

    def __init__(self, layers: list[tuple[nn.Linear, Activation]]) -> None:
        self.layers = [
            (
                linear.weight.detach().cpu().numpy().T.copy(),
                linear.bias.detach().cpu().numpy().copy() if linear.bias is not None else None,
                activation,
            )
            for linear, activation in layers
        ]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """
        :param x: a batch of flat observations
        :return: the network's output
        """
        h = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        for weight, bias, activation in self.layers:
            h = h @ weight
            if bias is not None:
                h += bias
            _activate_in_place(h, activation)
        return h


def _activate_in_place(h: np.ndarray, activation: Activation) -> None:
    if activation == "tanh":
        np.tanh(h, out=h)
    elif activation == "relu":
        np.maximum(h, 0.0, out=h)


def forward_cache(layers: list[tuple[nn.Linear, Activation]], x: th.Tensor) -> list[th.Tensor]:
    """
    Run the MLP without autograd, keeping each layer's input and the final output.

    :param layers: output of :func:`mlp_layers`
    :param x: inputs, shape ``(batch, in_features)``
    :return: ``[input of layer 0, input of layer 1, ..., network output]``
    """
    with th.no_grad():
        h = x.float().reshape(len(x), -1)
        cache = [h]
        for linear, activation in layers:
            h = th.addmm(linear.bias, h, linear.weight.t()) if linear.bias is not None else h @ linear.weight.t()
            if activation == "tanh":
                h = th.tanh(h)
            elif activation == "relu":
                h = th.relu(h)
            cache.append(h)
    return cache


def _activation_derivative(delta: th.Tensor, output: th.Tensor, activation: Activation) -> th.Tensor:
    """``delta`` times the activation's derivative, given the activation's output (tensors or arrays)."""
    if activation == "tanh":
        return delta * (1.0 - output * output)
    if activation == "relu":
        return delta * (output > 0)
    return delta


@th.no_grad()
def mlp_jvp(
    layers: list[tuple[nn.Linear, Activation]],
    cache: list[th.Tensor],
    tangents: list[tuple[th.Tensor, th.Tensor | None]],
) -> th.Tensor:
    """
    Forward-mode derivative: the change of the MLP's output for a parameter change (``J v``).

    :param layers: output of :func:`mlp_layers`
    :param cache: output of :func:`forward_cache`
    :param tangents: ``(d weight, d bias)`` of each layer
    :return: ``J v``, shape ``(batch, out_features)``
    """
    d_hidden: th.Tensor | None = None
    for index, ((linear, activation), (d_weight, d_bias)) in enumerate(zip(layers, tangents, strict=True)):
        d_out = cache[index] @ d_weight.t()
        if d_bias is not None:
            d_out = d_out + d_bias
        if d_hidden is not None:
            d_out = d_out + d_hidden @ linear.weight.t()
        d_hidden = _activation_derivative(d_out, cache[index + 1], activation)
    assert d_hidden is not None
    return d_hidden


@th.no_grad()
def mlp_vjp(
    layers: list[tuple[nn.Linear, Activation]],
    cache: list[th.Tensor],
    grad_output: th.Tensor,
) -> list[tuple[th.Tensor, th.Tensor | None]]:
    """
    Reverse-mode derivative: ``J^T u`` for a cotangent ``u`` of the output, per layer.

    :param layers: output of :func:`mlp_layers`
    :param cache: output of :func:`forward_cache`
    :param grad_output: ``u``, shape ``(batch, out_features)``
    :return: ``(grad weight, grad bias)`` of each layer
    """
    grads: list[tuple[th.Tensor, th.Tensor | None]] = []
    delta = grad_output
    for index in range(len(layers) - 1, -1, -1):
        linear, activation = layers[index]
        delta = _activation_derivative(delta, cache[index + 1], activation)
        grads.append((delta.t() @ cache[index], delta.sum(dim=0) if linear.bias is not None else None))
        if index > 0:
            delta = delta @ linear.weight
    grads.reverse()
    return grads


def mse_gradients(layers: list[tuple[nn.Linear, Activation]], x: th.Tensor, target: th.Tensor) -> th.Tensor:
    """
    Set ``.grad`` of the MLP's parameters to the gradient of ``mean((mlp(x) - target)^2)``, by hand.

    The same numbers autograd would give, at a fraction of the overhead for small networks.

    :param layers: output of :func:`mlp_layers` (a single output unit)
    :param x: inputs, shape ``(batch, in_features)``
    :param target: regression targets, shape ``(batch,)``
    :return: the loss (a detached scalar tensor)
    """
    cache = forward_cache(layers, x)
    error = cache[-1].squeeze(-1) - target
    grads = mlp_vjp(layers, cache, (2.0 / len(target)) * error.unsqueeze(-1))
    for (linear, _), (grad_weight, grad_bias) in zip(layers, grads, strict=True):
        linear.weight.grad = grad_weight
        if linear.bias is not None:
            linear.bias.grad = grad_bias
    return error.square().mean()


class NumpyAdamFit:
    """
    Fit a plain MLP regressor (the critic) with Adam in NumPy, reading and writing the torch parameters and the torch
    Adam state, so the result is what ``optimizer.step()`` on the same mini-batches would give (to float32 rounding)
    and everything downstream (save/load, sb3-contrib, a later torch step) sees the usual state.

    The parameters live in one flat vector while fitting, so one Adam update is a handful of NumPy operations.
    Built by :meth:`create`, which returns ``None`` when the optimizer is not a plain Adam on CPU.

    :param layers: output of :func:`mlp_layers`
    :param optimizer: the torch Adam optimizer holding these parameters
    """

    def __init__(self, layers: list[tuple[nn.Linear, Activation]], optimizer: th.optim.Adam) -> None:
        self.layers = layers
        self.optimizer = optimizer
        group = optimizer.param_groups[0]
        self.lr, (self.beta1, self.beta2), self.eps = float(group["lr"]), group["betas"], float(group["eps"])
        self.params = [
            p for linear, _ in layers for p in ((linear.weight, linear.bias) if linear.bias is not None else (linear.weight,))
        ]
        sizes = [p.numel() for p in self.params]
        self.flat = np.concatenate([p.detach().cpu().numpy().reshape(-1) for p in self.params]).astype(np.float32)
        self.grad = np.zeros_like(self.flat)
        self.exp_avg = np.zeros_like(self.flat)
        self.exp_avg_sq = np.zeros_like(self.flat)
        self.step_count = 0
        offsets = np.cumsum([0, *sizes])
        self.slices = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        for param, part in zip(self.params, self.slices, strict=True):
            state = optimizer.state.get(param, {})
            if state:
                self.exp_avg[part] = state["exp_avg"].cpu().numpy().reshape(-1)
                self.exp_avg_sq[part] = state["exp_avg_sq"].cpu().numpy().reshape(-1)
                self.step_count = int(float(state["step"]))
        self.views = []  # (weight, bias, grad weight, grad bias, activation) as views into the flat vectors
        index = 0
        for linear, activation in layers:
            weight = self.flat[self.slices[index]].reshape(linear.weight.shape)
            grad_weight = self.grad[self.slices[index]].reshape(linear.weight.shape)
            index += 1
            bias = grad_bias = None
            if linear.bias is not None:
                bias, grad_bias = self.flat[self.slices[index]], self.grad[self.slices[index]]
                index += 1
            self.views.append((weight, bias, grad_weight, grad_bias, activation))

    @classmethod
    def create(cls, layers: list[tuple[nn.Linear, Activation]] | None, optimizer: th.optim.Optimizer) -> "NumpyAdamFit | None":
        """
        :param layers: output of :func:`mlp_layers`, or None
        :param optimizer: the policy's optimizer
        :return: the fitter, or ``None`` when this fast path does not apply
        """
        if layers is None or type(optimizer) is not th.optim.Adam or len(optimizer.param_groups) != 1:
            return None
        group = optimizer.param_groups[0]
        if group.get("amsgrad") or group.get("weight_decay") or group.get("maximize") or group.get("decoupled_weight_decay"):
            return None
        if any(linear.weight.device.type != "cpu" for linear, _ in layers):
            return None
        return cls(layers, optimizer)

    def step(self, x: np.ndarray, target: np.ndarray) -> float:
        """
        One Adam step on ``mean((mlp(x) - target)^2)``.

        :param x: inputs, shape ``(batch, in_features)``
        :param target: targets, shape ``(batch,)``
        :return: the loss before the step
        """
        inputs = [x]
        h = x
        for weight, bias, _, _, activation in self.views:
            h = h @ weight.T
            if bias is not None:
                h += bias
            _activate_in_place(h, activation)
            inputs.append(h)
        error = h[:, 0] - target
        delta = (2.0 / len(target)) * error[:, None]
        for index in range(len(self.views) - 1, -1, -1):
            weight, bias, grad_weight, grad_bias, activation = self.views[index]
            delta = _activation_derivative(delta, inputs[index + 1], activation)  # type: ignore[arg-type]
            np.matmul(delta.T, inputs[index], out=grad_weight)
            if grad_bias is not None:
                np.sum(delta, axis=0, out=grad_bias)
            if index > 0:
                delta = delta @ weight
        self.step_count += 1
        self.exp_avg += (1.0 - self.beta1) * (self.grad - self.exp_avg)
        self.exp_avg_sq *= self.beta2
        self.exp_avg_sq += (1.0 - self.beta2) * self.grad * self.grad
        bias_correction1 = 1.0 - self.beta1**self.step_count
        bias_correction2_sqrt = (1.0 - self.beta2**self.step_count) ** 0.5
        denominator = np.sqrt(self.exp_avg_sq) / bias_correction2_sqrt + self.eps
        self.flat -= (self.lr / bias_correction1) * self.exp_avg / denominator
        return float(np.mean(error * error))

    def write_back(self) -> None:
        """Copy the fitted parameters and the Adam moments back into the torch parameters and optimizer state."""
        with th.no_grad():
            for param, part in zip(self.params, self.slices, strict=True):
                param.copy_(th.from_numpy(self.flat[part].reshape(param.shape)))
                self.optimizer.state[param] = {
                    "step": th.tensor(float(self.step_count), dtype=th.float32),
                    "exp_avg": th.from_numpy(self.exp_avg[part].reshape(param.shape).copy()),
                    "exp_avg_sq": th.from_numpy(self.exp_avg_sq[part].reshape(param.shape).copy()),
                }
