"""
Image observations normalized once per update instead of at every network pass.

SB3's policies divide image observations by 255 in ``extract_features`` (``preprocess_obs``) at every call. One
update of TRPO on Atari calls the policy's networks on the whole rollout dozens of times (the gradient, the Fisher
products, each line-search try, each critic mini-batch), and on thousands of 84x84x4 frames the division is a real
share of each call. :func:`images_normalized_once` divides once and lets the policy skip it for the rest
of the update: with ``normalize_images`` off, ``preprocess_obs`` returns a float Box observation as it is, so every
pass sees the very tensor it would have computed (the same float32 values, bit for bit).

It applies only where that equivalence is plain: a policy whose feature extraction is SB3's own (the fast paths'
:func:`~sb3_trpo_ext.common.backends.is_stock_policy`), normalizing images, with a Box observation space or a Dict
of Box spaces (Discrete observations are one-hot encoded by ``preprocess_obs``, which must not run twice).

On the CPU, the normalized frames can also be laid out channels-last (:func:`channels_last_safe`): oneDNN's
convolutions run faster on that layout (``benchmarks/speed_atari.py`` measures an update), the values are the same
and only the convolutions' summation order differs. It applies only to the features extractors whose ``forward``
is known to take any memory layout (SB3's ``NatureCNN`` and our ``TRPOAtariCNN`` flatten with ``nn.Flatten``, which
reshapes); a user's extractor might call ``.view`` on a conv output, which a channels-last tensor does not allow.
"""

import contextlib
from collections.abc import Callable, Iterator

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space, preprocess_obs
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs

from sb3_trpo_ext.common.torch_layers import TRPOAtariCNN

Normalize = Callable[[PyTorchObs], PyTorchObs]

ANY_LAYOUT_EXTRACTORS = (NatureCNN, TRPOAtariCNN)
"""Features extractors (exact types) whose ``forward`` takes image batches in any memory layout."""


def normalizes_images(policy: ActorCriticPolicy) -> bool:
    """:param policy: the policy
    :return: whether its preprocessing divides image observations by 255 and nothing else that could not run twice"""
    space = policy.observation_space
    subspaces = list(space.spaces.values()) if isinstance(space, spaces.Dict) else [space]
    return (
        bool(policy.normalize_images)
        and all(isinstance(sub, spaces.Box) for sub in subspaces)
        and any(is_image_space(sub, check_channels=False) for sub in subspaces)
    )


def channels_last_safe(policy: ActorCriticPolicy) -> bool:
    """:param policy: the policy
    :return: whether its normalized image batches may be laid out channels-last: on the CPU, image observations (not
        a Dict), and every features extractor one of :data:`ANY_LAYOUT_EXTRACTORS`"""
    extractors = {policy.features_extractor, policy.pi_features_extractor, policy.vf_features_extractor} - {None}
    return (
        policy.device.type == "cpu"
        and not isinstance(policy.observation_space, spaces.Dict)
        and normalizes_images(policy)
        and all(type(extractor) in ANY_LAYOUT_EXTRACTORS for extractor in extractors)
    )


@contextlib.contextmanager
def images_normalized_once(
    policy: ActorCriticPolicy, enabled: bool = True, channels_last: bool = False
) -> Iterator[Normalize]:
    """
    Within the block, ``normalize(observations)`` returns the observations as the policy preprocesses them, and the
    policy skips its own division by 255 (``normalize_images`` is restored on exit, also on an error).

    :param policy: the policy
    :param enabled: whether the policy's feature extraction is SB3's own (``model.backends.rollouts == "fast"``);
        otherwise, or for a policy that does not normalize images, ``normalize`` returns its input and nothing changes
    :param channels_last: lay the normalized images out channels-last (only where :func:`channels_last_safe`)
    :return: the ``normalize`` function (the same tensor for the same input, computed once)
    """
    if not (enabled and normalizes_images(policy)):
        yield lambda observations: observations
        return
    cache: dict[int, tuple[PyTorchObs, PyTorchObs]] = {}

    def normalize(observations: PyTorchObs) -> PyTorchObs:
        key = id(observations)
        if key not in cache:  # the input is kept alongside, so its id cannot be reused within the block
            cache[key] = (observations, _preprocessed(policy, observations, channels_last))
        return cache[key][1]

    policy.normalize_images = False
    try:
        yield normalize
    finally:
        policy.normalize_images = True


def _preprocessed(policy: ActorCriticPolicy, observations: PyTorchObs, channels_last: bool) -> PyTorchObs:
    with th.no_grad():
        normalized = preprocess_obs(observations, policy.observation_space, normalize_images=True)  # type: ignore[arg-type]
    if channels_last and isinstance(normalized, th.Tensor) and normalized.dim() == 4:
        return normalized.contiguous(memory_format=th.channels_last)
    return normalized  # type: ignore[return-value]
