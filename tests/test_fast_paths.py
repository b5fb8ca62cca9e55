"""The fast paths for plain MLP policies compute what the generic torch code computes."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from torch.nn import functional as F

from sb3_trpo_ext.common.fast_mlp import NumpyAdamFit, NumpyMlp, mlp_layers, mse_gradients


@pytest.fixture(params=[th.nn.Tanh, th.nn.ReLU])
def policy(request) -> ActorCriticPolicy:
    th.manual_seed(0)
    env = gym.make("Pendulum-v1")
    return ActorCriticPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-3,
        net_arch=dict(pi=[16, 16], vf=[16, 8]),
        activation_fn=request.param,
    )


def test_numpy_actor_equals_torch_actor(policy) -> None:
    obs = th.randn(5, 3)
    expected = policy.action_net(policy.mlp_extractor.forward_actor(obs)).detach().numpy()
    assert np.allclose(NumpyMlp(mlp_layers(policy, "actor"))(obs.numpy()), expected, atol=1e-6)


def test_hand_written_critic_gradient_equals_autograd(policy) -> None:
    layers = mlp_layers(policy, "critic")
    obs, target = th.randn(32, 3), th.randn(32)
    loss = F.mse_loss(policy.predict_values(obs).flatten(), target)
    expected = th.autograd.grad(loss, [p for linear, _ in layers for p in (linear.weight, linear.bias)])
    hand_loss = mse_gradients(layers, obs, target)
    got = [p.grad for linear, _ in layers for p in (linear.weight, linear.bias)]
    assert th.allclose(hand_loss, loss.detach())
    for g, e in zip(got, expected, strict=True):
        assert th.allclose(g, e, atol=1e-6)


def test_numpy_adam_fit_matches_torch_adam_and_writes_its_state(policy) -> None:
    reference = copy.deepcopy(policy)
    obs, target = th.randn(256, 3), 3 * th.randn(256)
    batches = [th.randint(0, 256, (64,)) for _ in range(30)]
    for index in batches:
        reference.optimizer.zero_grad(set_to_none=True)
        F.mse_loss(reference.predict_values(obs[index]).flatten(), target[index]).backward()
        reference.optimizer.step()
    fit = NumpyAdamFit.create(mlp_layers(policy, "critic"), policy.optimizer)
    assert fit is not None
    for index in batches:
        fit.step(obs.numpy()[index.numpy()], target.numpy()[index.numpy()])
    fit.write_back()
    for p, q in zip(policy.value_net.parameters(), reference.value_net.parameters(), strict=True):
        assert th.allclose(p, q, atol=1e-5)
        state, ref_state = policy.optimizer.state[p], reference.optimizer.state[q]
        assert float(state["step"]) == float(ref_state["step"]) == 30
        assert th.allclose(state["exp_avg_sq"], ref_state["exp_avg_sq"], rtol=1e-4, atol=1e-9)
    # the actor is untouched and has no optimizer state
    assert all(p not in policy.optimizer.state for p in policy.action_net.parameters())


def test_numpy_adam_fit_declines_optimizers_it_does_not_reproduce(policy) -> None:
    layers = mlp_layers(policy, "critic")
    assert NumpyAdamFit.create(layers, th.optim.SGD(policy.parameters(), lr=0.1)) is None
    assert NumpyAdamFit.create(layers, th.optim.Adam(policy.parameters(), lr=0.1, amsgrad=True)) is None
    assert NumpyAdamFit.create(None, policy.optimizer) is None
