"""
The Fisher-vector-product paths of :mod:`sb3_trpo_ext.common.fisher` side by side, one torch thread, median of
``--repeats`` (the paths alternate within each repeat, so that machine noise hits them alike):

- Hopper-v5 sized MLP actor (11 -> 64 -> 64 -> 3, tanh, diagonal Gaussian), batch 2048, 25 products (CG steps):
  ``numpy-gauss-newton``, ``gauss-newton`` (torch.func) and ``double-backprop``, setup included;
- ``--cnn``: NatureCNN actor (separate actor and critic extractors), Breakout-sized batch of 1024 84x84x4 uint8
  frames, 4 actions: ``gauss-newton`` vs ``double-backprop``, setup and per-product times measured on
  ``--cnn-products`` products, and the time of a 25-step CG solve they imply.

    python benchmarks/fisher_paths.py --repeats 9
    python benchmarks/fisher_paths.py --repeats 3 --cnn --cnn-products 3
"""

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy

from sb3_trpo_ext.common.backends import choose_backends
from sb3_trpo_ext.common.fisher import make_fisher_vector_product


def actor_parameters(policy: ActorCriticPolicy) -> list[th.nn.Parameter]:
    actor_modules = (policy.pi_features_extractor, policy.mlp_extractor.policy_net, policy.action_net)
    params = [p for module in actor_modules for p in module.parameters()]
    return ([policy.log_std] if hasattr(policy, "log_std") else []) + params


def time_paths(policy, observations, backends: list[str], n_products: int, repeats: int) -> dict[str, tuple[float, float]]:
    """:return: per path, the median setup time and the median time per product (seconds)"""
    params = actor_parameters(policy)
    vectors = [th.randn(sum(p.numel() for p in params)) for _ in range(n_products)]
    setups: dict[str, list[float]] = {b: [] for b in backends}
    products: dict[str, list[float]] = {b: [] for b in backends}
    for _ in range(repeats):
        for backend in backends:
            start = time.perf_counter()
            fvp = make_fisher_vector_product(backend, policy, observations, params)  # type: ignore[arg-type]
            built = time.perf_counter()
            for vector in vectors:
                fvp(vector)
            setups[backend].append(built - start)
            products[backend].append((time.perf_counter() - built) / n_products)
    return {b: (statistics.median(setups[b]), statistics.median(products[b])) for b in backends}


def report(title: str, results: dict[str, tuple[float, float]], n_products: int) -> None:
    print(title)
    print(f"{'path':>20} {'setup ms':>10} {'per product ms':>15} {f'setup + {n_products} products ms':>26}")
    for backend, (setup, product) in results.items():
        print(f"{backend:>20} {1000 * setup:>10.1f} {1000 * product:>15.2f} {1000 * (setup + n_products * product):>26.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--cnn", action="store_true", help="also the NatureCNN measurement (minutes)")
    parser.add_argument("--cnn-batch", type=int, default=1024)
    parser.add_argument("--cnn-products", type=int, default=3)
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    th.manual_seed(0)
    print(f"torch {th.__version__}, 1 thread")

    mlp = ActorCriticPolicy(spaces.Box(-np.inf, np.inf, (11,)), spaces.Box(-1.0, 1.0, (3,)), lambda _: 3e-4)
    assert choose_backends(mlp).fisher == "numpy-gauss-newton"
    results = time_paths(mlp, th.randn(2048, 11), ["numpy-gauss-newton", "gauss-newton", "double-backprop"], 25, args.repeats)
    report("Hopper-v5 sized MLP actor, batch 2048, 25 products", results, 25)

    if args.cnn:
        cnn = ActorCriticCnnPolicy(
            spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(4), lambda _: 3e-4, share_features_extractor=False
        )
        assert choose_backends(cnn).fisher == "gauss-newton"
        frames = th.randint(0, 256, (args.cnn_batch, 4, 84, 84), dtype=th.uint8)
        results = time_paths(cnn, frames, ["gauss-newton", "double-backprop"], args.cnn_products, args.repeats)
        report(f"\nNatureCNN actor, batch {args.cnn_batch} (Breakout-sized), 25-step CG implied", results, 25)


if __name__ == "__main__":
    main()
