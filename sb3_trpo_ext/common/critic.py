"""
The critic (value function) fit: ``n_epochs`` epochs of shuffled mini-batches, one optimizer step each, on the loss
:func:`critic_loss`. Two paths, chosen by :func:`sb3_trpo_ext.common.backends.choose_backends`:

- ``"numpy-adam"`` (plain MLP critic, plain Adam, CPU): the forward and backward of :class:`~sb3_trpo_ext.common.
  fast_mlp.NumpyMlp` and Adam on its flat parameter vector (:class:`NumpyAdam`), which starts from the torch Adam state
  and writes the parameters and the state back: the result is torch Adam's to float32 rounding, and save/load,
  sb3-contrib and a later torch step see the usual optimizer state;
- ``"torch"``: autograd and the policy's own optimizer, for any critic.

To change the critic loss, edit :func:`critic_loss` (the value and its derivative with respect to the values); both
paths use it, and ``tests/test_fast_paths.py`` checks the derivative against autograd and the two paths against each
other.
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs

from sb3_trpo_ext.common.fast_mlp import MlpPlan, NumpyMlp, mlp_inputs, mlp_plan, single_threaded_blas
from sb3_trpo_ext.common.policy_batch import index_observations
from sb3_trpo_ext.common.precision import Precision, mixed_precision

if TYPE_CHECKING:
    from sb3_trpo_ext.common.backends import CriticFitBackend

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, th.Tensor)


def critic_loss(values: ArrayOrTensor, targets: ArrayOrTensor) -> tuple[ArrayOrTensor, ArrayOrTensor]:
    """
    The regression loss of the critic, mean squared error, and its derivative with respect to ``values``.

    Written with operators NumPy arrays and torch tensors share, so that both fit paths use this one definition.

    :param values: the critic's values, shape ``(batch,)``
    :param targets: the regression targets (returns), shape ``(batch,)``
    :return: the loss (a scalar) and ``d loss / d values`` (shape ``(batch,)``)
    """
    error = values - targets
    return (error * error).mean(), error * (2.0 / len(error))


def minibatches(n_samples: int, batch_size: int, n_epochs: int) -> Iterator[np.ndarray]:
    """
    Indices of ``n_epochs`` epochs of shuffled mini-batches, drawn from torch's RNG (so ``seed`` holds).

    :param n_samples: the number of samples
    :param batch_size: the mini-batch size (the last one of an epoch may be smaller)
    :param n_epochs: the number of passes over the samples
    """
    for _ in range(n_epochs):
        permutation = th.randperm(n_samples).numpy()
        for start in range(0, n_samples, batch_size):
            yield permutation[start : start + batch_size]


def fit_critic(
    backend: "CriticFitBackend",
    policy: ActorCriticPolicy,
    observations: PyTorchObs,
    returns: th.Tensor,
    batch_size: int,
    n_epochs: int,
    precision: Precision = "float32",
    plan: MlpPlan | None = None,
) -> list[float]:
    """
    Fit the value function: ``n_epochs`` epochs of shuffled mini-batches of ``batch_size``, one step each.

    Only the critic's parameters move (the actor's gradients stay ``None``, so Adam leaves them alone); a features
    extractor shared with the actor is not trained by the critic, or it would move the policy after the trust-region
    step. Non-finite returns skip the fit.

    :param backend: the path, from :func:`~sb3_trpo_ext.common.backends.choose_backends`
    :param policy: the policy (its critic and optimizer)
    :param observations: all observations of the rollout
    :param returns: the regression targets
    :param batch_size: the mini-batch size
    :param n_epochs: the number of epochs
    :param precision: the number format of the torch path's forward and backward passes (the loss, the gradients
        and Adam are float32 either way)
    :param plan: the policy's MLP plan (``model.mlp_plan``; default: read off the policy), for the NumPy path
    :return: the mini-batch losses
    """
    if not th.isfinite(returns).all():
        return []
    batches = minibatches(len(returns), batch_size, n_epochs)
    if backend == "numpy-adam":
        return _fit_numpy(policy, observations, returns, batches, plan if plan is not None else mlp_plan(policy))  # type: ignore[arg-type]
    if backend == "torch":
        return _fit_torch(policy, observations, returns, batches, precision)
    raise ValueError(f"Unknown critic-fit backend {backend!r}")


def _fit_numpy(
    policy: ActorCriticPolicy, observations: PyTorchObs, returns: th.Tensor, batches: Iterator[np.ndarray], plan: MlpPlan
) -> list[float]:
    assert plan.critic is not None, "the numpy-adam critic fit needs a plain MLP critic"
    fit = NumpyAdam(NumpyMlp(plan.critic), policy.optimizer)  # type: ignore[arg-type]
    inputs = mlp_inputs(observations, plan.input_keys)
    targets = returns.cpu().numpy().astype(np.float32)
    with single_threaded_blas():
        losses = [fit.step(inputs[index], targets[index]) for index in batches]
    fit.write_back()
    return losses


def _fit_torch(
    policy: ActorCriticPolicy,
    observations: PyTorchObs,
    returns: th.Tensor,
    batches: Iterator[np.ndarray],
    precision: Precision = "float32",
) -> list[float]:
    def minibatch_loss(batch: np.ndarray) -> th.Tensor:
        index = th.as_tensor(batch, device=returns.device)
        with mixed_precision(precision, returns.device):
            values = critic_values(policy, index_observations(observations, index)).flatten()
        return critic_loss(values.float(), returns[index])[0]

    return optimizer_steps(policy.optimizer, (partial(minibatch_loss, batch) for batch in batches))


def optimizer_steps(
    optimizer: th.optim.Optimizer, losses: Iterable[Callable[[], th.Tensor]], frozen: Sequence[th.Tensor] = ()
) -> list[float]:
    """
    The torch critic fit's loop, one optimizer step per mini-batch loss (the feed-forward fit's and the recurrent
    classes' fit on sequences).

    :param optimizer: the policy's optimizer
    :param losses: each mini-batch's loss, computed when called (after the gradients are zeroed)
    :param frozen: parameters whose gradients are dropped before each step (the actor's, where the loss reaches them)
    :return: the mini-batch losses
    """
    values = []
    for loss_of in losses:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        for param in frozen:
            param.grad = None
        optimizer.step()
        values.append(loss.detach())
    return th.stack(values).tolist() if values else []


def critic_values(policy: ActorCriticPolicy, observations: PyTorchObs) -> th.Tensor:
    """
    :param policy: the policy
    :param observations: a batch of observations
    :return: the critic's values, with a features extractor shared with the actor held fixed
    """
    if not policy.share_features_extractor:
        return policy.predict_values(observations)
    with th.no_grad():
        features = policy.extract_features(observations)
    return policy.value_net(policy.mlp_extractor.forward_critic(features))  # type: ignore[arg-type]


class NumpyAdam:
    """
    Adam on a :class:`~sb3_trpo_ext.common.fast_mlp.NumpyMlp`'s flat parameter vector, continuing the torch Adam
    state of those parameters and writing parameters and state back (:meth:`write_back`).

    One step is the update of ``torch.optim.Adam`` (no AMSGrad, weight decay or maximize; ``choose_backends`` checks),
    in a handful of NumPy operations on the whole vector.

    :param mlp: the critic
    :param optimizer: the torch Adam optimizer holding the critic's parameters (one parameter group)
    """

    def __init__(self, mlp: NumpyMlp, optimizer: th.optim.Adam) -> None:
        self.mlp = mlp
        self.optimizer = optimizer
        group = optimizer.param_groups[0]
        self.lr, (self.beta1, self.beta2), self.eps = float(group["lr"]), group["betas"], float(group["eps"])
        self.grad = np.zeros_like(mlp.flat)
        self.exp_avg = np.zeros_like(mlp.flat)
        self.exp_avg_sq = np.zeros_like(mlp.flat)
        self.step_count = 0
        moments = zip(mlp.params, mlp.layout.split(self.exp_avg), mlp.layout.split(self.exp_avg_sq), strict=True)
        for param, exp_avg, exp_avg_sq in moments:
            state = optimizer.state.get(param, {})
            if state:
                exp_avg[...] = state["exp_avg"].cpu().numpy()
                exp_avg_sq[...] = state["exp_avg_sq"].cpu().numpy()
                self.step_count = int(float(state["step"]))

    def step(self, x: np.ndarray, targets: np.ndarray) -> float:
        """
        One Adam step on :func:`critic_loss`.

        :param x: inputs, shape ``(batch, in_features)``
        :param targets: targets, shape ``(batch,)``
        :return: the loss before the step
        """
        outputs = self.mlp.forward(x)
        loss, grad_values = critic_loss(outputs[-1][:, 0], targets)
        self.mlp.backward(outputs, grad_values[:, None], out=self.grad)
        self.step_count += 1
        self.exp_avg += (1.0 - self.beta1) * (self.grad - self.exp_avg)
        self.exp_avg_sq *= self.beta2
        self.exp_avg_sq += (1.0 - self.beta2) * self.grad * self.grad
        bias_correction1 = 1.0 - self.beta1**self.step_count
        bias_correction2_sqrt = (1.0 - self.beta2**self.step_count) ** 0.5
        denominator = np.sqrt(self.exp_avg_sq) / bias_correction2_sqrt + self.eps
        self.mlp.flat -= (self.lr / bias_correction1) * self.exp_avg / denominator
        return float(loss)

    def write_back(self) -> None:
        """Copy the fitted parameters and the Adam moments into the torch parameters and optimizer state."""
        self.mlp.write_back()
        layout = self.mlp.layout
        moments = zip(self.mlp.params, layout.split(self.exp_avg), layout.split(self.exp_avg_sq), strict=True)
        for param, exp_avg, exp_avg_sq in moments:
            self.optimizer.state[param] = {
                "step": th.tensor(float(self.step_count), dtype=th.float32),
                "exp_avg": th.from_numpy(exp_avg.copy()),
                "exp_avg_sq": th.from_numpy(exp_avg_sq.copy()),
            }
