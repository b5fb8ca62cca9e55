"""
Mixed precision: which parts of an update may run their network passes in bfloat16, decided once per model.

Under ``"bfloat16"`` the rollout's forward passes (actions and values), the critic fit and the Fisher-vector products
run under ``torch.autocast(dtype=torch.bfloat16)``; the surrogate's gradient, conjugate gradient, the step length
``s^T F s``, the line search (the surrogate and the *measured* KL that decides acceptance) and everything the user
calls (``predict``, ``evaluate_actions``) stay float32, and so do the parameters and the optimizer state. The
trust region is therefore enforced in float32 whatever the precision: a bfloat16 Fisher only perturbs the search
direction, by less than drawing another random subsample of the states it is averaged over does
(``tests/test_precision.py`` checks both).

``"auto"`` picks bfloat16 where it pays and the hardware has the units: a stock policy
(:func:`~sb3_trpo_ext.common.backends.is_stock_policy`) with convolutional layers (image observations; MLP policies
run their NumPy paths, where bfloat16 has nothing to offer) on a CPU with avx512_bf16 or AMX, or on a CUDA device
that supports bfloat16. Everything else runs float32.
"""

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, TypeVar

import torch as th
from stable_baselines3.common.preprocessing import preprocess_obs
from torch import nn

if TYPE_CHECKING:
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.type_aliases import PyTorchObs

Precision = Literal["float32", "bfloat16"]
"""What the mixed-precision parts run (``model.backends.precision``)."""

PrecisionSetting = Literal["auto", "float32", "bfloat16"]
"""What a user asks for (the algorithms' ``precision`` keyword)."""

PRECISION_SETTINGS: tuple[str, ...] = ("auto", "float32", "bfloat16")


def bfloat16_units(device: th.device) -> bool:
    """
    :param device: the policy's device
    :return: whether ``device`` computes bfloat16 natively (a CPU with avx512_bf16 or AMX, or a CUDA device with
        bfloat16 support)
    """
    if device.type == "cuda":
        return th.cuda.is_available() and th.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(th.cpu, name, lambda: False)()) for name in checks)


def has_convolutions(module: nn.Module) -> bool:
    """:param module: a network
    :return: whether it holds a convolution (where bfloat16 pays)"""
    return any(isinstance(child, nn.modules.conv._ConvNd) for child in module.modules())


def resolve_precision(setting: str, stock: bool, network: nn.Module, device: th.device) -> Precision:
    """
    :param setting: the user's ``precision``: ``"auto"``, ``"float32"`` or ``"bfloat16"``
    :param stock: whether the fast paths are verified for the policy
    :param network: the policy
    :param device: the policy's device
    :return: what the mixed-precision parts run
    :raises ValueError: ``"bfloat16"`` asked for on a device without bfloat16 units
    """
    if setting == "float32":
        return "float32"
    if setting == "bfloat16":
        if not bfloat16_units(device):
            raise ValueError(
                f"precision='bfloat16' needs a device that computes bfloat16 (a CPU with avx512_bf16 or AMX, or a CUDA "
                f"GPU with bfloat16 support); {device} has none. Use precision='auto' or 'float32'."
            )
        return "bfloat16"
    return "bfloat16" if stock and has_convolutions(network) and bfloat16_units(device) else "float32"


@contextlib.contextmanager
def mixed_precision(precision: Precision, device: th.device) -> Iterator[None]:
    """
    Run the enclosed network passes in ``precision`` (bfloat16 autocast, or nothing under float32).

    :param precision: ``model.backends.precision``
    :param device: the device the passes run on
    """
    if precision != "bfloat16":
        yield
        return
    with th.autocast(device_type=device.type, dtype=th.bfloat16):
        yield


class BFloat16Networks:
    """
    The policy's networks cast once to bfloat16, for a rollout, which holds the policy fixed: under autocast every
    call would cast the weights again, which on the small batches of a rollout (one observation per env) costs more
    than the layers themselves. Same results as the policy's passes under bfloat16 autocast, up to bfloat16 rounding.

    :param policy: an actor-critic policy whose feature extraction is SB3's own (a stock policy)
    """

    def __init__(self, policy: "ActorCriticPolicy") -> None:
        self.policy = policy
        self.pi_features_extractor = _bfloat16_copy(policy.pi_features_extractor)
        self.vf_features_extractor = (
            self.pi_features_extractor if policy.share_features_extractor else _bfloat16_copy(policy.vf_features_extractor)
        )
        self.mlp_extractor = _bfloat16_copy(policy.mlp_extractor)
        self.action_net = _bfloat16_copy(policy.action_net)
        self.value_net = _bfloat16_copy(policy.value_net)

    def __call__(self, observations: "PyTorchObs", need_values: bool) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """
        :param observations: a batch of observations, as tensors
        :param need_values: also compute the critic's values
        :return: the actor's output and latent features, and the values (``None`` unless asked), in float32
        """
        policy = self.policy
        with th.no_grad():
            inputs = preprocess_obs(observations, policy.observation_space, normalize_images=policy.normalize_images)
            inputs = {k: v.bfloat16() for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.bfloat16()
            pi_features = self.pi_features_extractor(inputs)
            latent_pi = self.mlp_extractor.forward_actor(pi_features)
            values = None
            if need_values:
                shared = policy.share_features_extractor
                vf_features = pi_features if shared else self.vf_features_extractor(inputs)
                values = self.value_net(self.mlp_extractor.forward_critic(vf_features)).flatten().float()
            return self.action_net(latent_pi).float(), latent_pi.float(), values


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _bfloat16_copy(module: ModuleT) -> ModuleT:
    return copy.deepcopy(module).to(dtype=th.bfloat16)
