"""
Demo (the `make demo` job): train TRPO on the paper's Hopper task for a few minutes.

Prints evaluation returns as it learns, saves the model, its VecNormalize statistics and a learning-curve PNG under
demo_output/, then loads the model back in a fresh object, evaluates it again, and compares that return with the
range measured over several seeds (benchmarks/results/demo_seeds/summary.json, from benchmarks/demo_seeds.py).
A single seed's curve changes with floating-point details across machines, so judge a run by the range.

    python examples/demo_hopper.py --timesteps 300000
"""

import argparse
import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch as th
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from sb3_trpo_ext import TRPO

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--env", default="Hopper-v5")
parser.add_argument("--timesteps", type=int, default=300_000)
parser.add_argument("--eval-freq", type=int, default=10_000)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--output", default="demo_output")
args = parser.parse_args()

SUMMARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "results", "demo_seeds", "summary.json")

th.set_num_threads(1)
os.makedirs(args.output, exist_ok=True)

# rl-zoo3's MuJoCo TRPO settings; target_kl is the paper's delta on the whole-distribution KL.
env = VecNormalize(make_vec_env(args.env, n_envs=2, seed=args.seed), gamma=0.99)
eval_env = VecNormalize(make_vec_env(args.env, n_envs=1, seed=args.seed + 100), training=False, norm_reward=False)
model = TRPO(
    "MlpPolicy", env, n_steps=1024, batch_size=128, cg_max_steps=25, cg_damping=0.1, n_critic_updates=20,
    gae_lambda=0.95, target_kl=0.03, learning_rate=1e-3, seed=args.seed,
)  # fmt: skip


class SyncedEvalCallback(EvalCallback):
    """EvalCallback whose eval env uses the training env's current normalization statistics."""

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            self.eval_env.obs_rms = env.obs_rms.copy()
            result = super()._on_step()
            print(f"  {self.num_timesteps:>7} steps: mean eval return {self.last_mean_reward:8.1f}", flush=True)
            return result
        return True


callback = SyncedEvalCallback(
    eval_env, eval_freq=args.eval_freq // 2, n_eval_episodes=5, log_path=args.output, deterministic=True, verbose=0
)
print(f"Training TRPO on {args.env} for {args.timesteps} steps")
start = time.perf_counter()
model.learn(args.timesteps, callback=callback)
elapsed = time.perf_counter() - start
print(f"Trained in {elapsed:.0f} s ({args.timesteps / elapsed:.0f} env-steps/s)")

model_path = os.path.join(args.output, "trpo_hopper.zip")
stats_path = os.path.join(args.output, "vecnormalize.pkl")
model.save(model_path)
env.save(stats_path)

curve = np.load(os.path.join(args.output, "evaluations.npz"))
plt.figure(figsize=(6, 4))
plt.plot(curve["timesteps"], curve["results"].mean(axis=1), marker="o")
plt.xlabel("environment steps")
plt.ylabel("mean evaluation return")
plt.title(f"sb3-trpo-ext TRPO on {args.env}")
plt.grid(alpha=0.3)
plt.tight_layout()
plot_path = os.path.join(args.output, "learning_curve.png")
plt.savefig(plot_path, dpi=100)

loaded = TRPO.load(model_path)
check_env = VecNormalize.load(stats_path, make_vec_env(args.env, n_envs=1, seed=args.seed + 200))
check_env.training, check_env.norm_reward = False, False
mean_return, std_return = evaluate_policy(loaded, check_env, n_eval_episodes=10, deterministic=True)
print(f"Saved {model_path}, {stats_path}, {plot_path}")
print(f"Loaded model: mean return over 10 episodes {mean_return:.1f} +/- {std_return:.1f}")

# The run's result, for benchmarks/demo_seeds.py (which repeats this demo over seeds).
result = {
    "env": args.env,
    "seed": args.seed,
    "timesteps": int(model.num_timesteps),
    "requested_timesteps": args.timesteps,
    "final_eval_timesteps": int(curve["timesteps"][-1]),
    "final_eval_return": float(curve["results"][-1].mean()),
    "loaded_return": float(mean_return),
    "loaded_return_std": float(std_return),
    "train_seconds": round(elapsed, 1),
}
with open(os.path.join(args.output, "result.json"), "w") as f:
    json.dump(result, f, indent=2)

# Compare with the return range measured over seeds (benchmarks/demo_seeds.py), when this run used its settings.
if os.path.exists(SUMMARY):
    with open(SUMMARY) as f:
        summary = json.load(f)
    ref = summary.get("data", summary)  # a benchmark result file: {"machine", ..., "data"} (older ones: flat)
    machine = summary["machine"]["description"] if isinstance(summary["machine"], dict) else summary["machine"]
    r = ref["loaded_return"]
    expected = (
        f"Expected on {machine} over {ref['n_seeds']} seeds: mean {r['mean']:,.0f}, range {r['min']:,.0f}-{r['max']:,.0f}"
    )
    if (args.env, args.timesteps) != (ref["env"], ref["timesteps"]):
        print(f"{expected} at {ref['timesteps']:,} steps on {ref['env']}; this run used other settings, so no comparison")
    elif mean_return < r["min"]:
        print(f"{expected}; this run: {mean_return:,.0f} (BELOW the range)")
        print("  Either a seed-to-seed outlier or something is broken: try another --seed; if that is low too, report it.")
    else:
        verdict = "within the range" if mean_return <= r["max"] else "above the range"
        print(f"{expected}; this run: {mean_return:,.0f} ({verdict})")
else:
    print(f"No multi-seed reference at {os.path.normpath(SUMMARY)} (run benchmarks/demo_seeds.py to measure one)")
