"""
Features extractors of the paper's experiments, for SB3's ``policy_kwargs``.

:class:`TRPOAtariCNN` is the Atari policy network of Schulman et al. (2015), Section 8 / Appendix D: two
convolutional layers of 16 channels with stride 2 and a fully connected layer of 20 units, tanh after each, much
smaller than SB3's ``NatureCNN`` (32/64/64 channels and 512 units). Select it in Python or in a YAML entry::

    policy_kwargs = dict(features_extractor_class=TRPOAtariCNN)
    # hyperparams/*.yml: policy_kwargs: "dict(features_extractor_class=TRPOAtariCNN)"

(our zoo entry point resolves the name; rl-zoo3's own needs the import path
``sb3_trpo_ext.common.torch_layers.TRPOAtariCNN`` spelled out in Python).
"""

import gymnasium as gym
import torch as th
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class TRPOAtariCNN(BaseFeaturesExtractor):
    """
    The paper's Atari network: conv 16 filters 4x4 stride 2, tanh; conv 16 filters 4x4 stride 2 (padding 1), tanh;
    fully connected ``features_dim`` units (20), tanh. The layout follows nnabla-rl's re-implementation of the paper
    (``ICML2015TRPOAtariPolicy``); on 84x84x4 frames it has 133K parameters (the paper's text says about 33.5K, for
    its own frame size).

    :param observation_space: an image space (channels first, as SB3's ``VecTransposeImage`` gives it)
    :param features_dim: units of the fully connected layer (the paper's 20)
    :param normalized_image: whether the images are already in [0, 1] (SB3's ``normalize_images=False``), which skips
        the check that the space is an image
    """

    def __init__(self, observation_space: gym.Space, features_dim: int = 20, normalized_image: bool = False) -> None:
        assert isinstance(observation_space, gym.spaces.Box), f"TRPOAtariCNN needs a Box space, got {observation_space}"
        super().__init__(observation_space, features_dim)
        if not normalized_image and not is_image_space(observation_space, check_channels=False):
            raise ValueError(
                f"TRPOAtariCNN needs image observations (a uint8 Box of shape (C, H, W) with values 0-255), got "
                f"{observation_space}. For images already scaled to [0, 1] pass "
                "policy_kwargs=dict(normalize_images=False, features_extractor_kwargs=dict(normalized_image=True))."
            )
        n_channels = observation_space.shape[0]
        self.cnn = nn.Sequential(
            nn.Conv2d(n_channels, 16, kernel_size=4, stride=2),
            nn.Tanh(),
            nn.Conv2d(16, 16, kernel_size=4, stride=2, padding=1),
            nn.Tanh(),
            nn.Flatten(),
        )
        with th.no_grad():
            n_flatten = self.cnn(th.as_tensor(observation_space.sample()[None]).float()).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.Tanh())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        """:param observations: preprocessed images, ``(batch, C, H, W)``
        :return: the features, ``(batch, features_dim)``"""
        return self.linear(self.cnn(observations))
