"""
The vine method's gradient quality per simulator step, against single path (GAE).

Question: for a given number of simulator steps, how close is a policy-gradient estimate to the gradient the policy
really has? "Close" is the cosine similarity to a reference direction computed from a very large batch, for the plain
gradient and for the natural-gradient direction (conjugate-gradient solution) TRPO steps along.

Design (and the choices the issue left open):

- **Checkpoints.** For each task, ``sb3_trpo_ext.TRPO`` trained with the task's entry of ``hyperparams/trpo_ext.yml``
  (seed 0, one run saved at two points): ``early`` (learning under way) and ``mid`` (most of the way): CartPole-v1
  3K / 10K steps (deterministic evaluation return about 200 / 450; it is solved at about 10K-20K, so a later
  checkpoint would study a converged policy), Pendulum-v1 20K / 40K (about -1100 / -400; solved at about 50K),
  Hopper-v5 50K / 200K. The exact counts are whole iterations (``info.json``). Saved under
  ``benchmarks/results/vine_study/checkpoints/{task}/{name}/``: ``policy.pt`` (the policy's ``state_dict``; ``*.zip``
  is git-ignored in this repository), ``vec_normalize.pkl`` where the entry normalizes, and ``info.json`` (10
  deterministic evaluation episodes). The study's envs use those VecNormalize statistics frozen
  (``training=False``), observations *and* rewards: the frozen reward scale is one positive constant, which changes
  no direction, but keeps the rewards on the scale the checkpoint's critic was fitted to (GAE and the vine's
  bootstrap at the cut both add critic values to rewards).
- **State distribution.** Every estimate starts from freshly seeded envs that first run the checkpoint's policy for a
  random burn-in of ``L`` to ``2L`` steps (``L`` the task's time limit), so that batches start at random points of
  their episodes as they do during training. Burn-in steps are not counted (training's envs are already running).
- **Reference** (per checkpoint): the gradient of the single-path surrogate TRPO maximizes (normalized GAE
  advantages, the checkpoint's own critic, exactly ``TRPO.train``'s batch) on chunks of ``E`` envs x ``T`` steps
  with independent seeds, collected until two independent halves (even vs odd chunks, each normalized on its own)
  have gradient cosine >= 0.95 or a cap is hit; the natural-gradient reference is the CG solution
  (``cg_max_steps``, ``cg_damping`` of the YAML) of the Fisher system for that gradient, with the analytic Fisher on
  up to ``fisher_states`` states drawn from the batch (the Fisher is an average over states; 64K states estimate it
  far better than the gradient needs). A second, Monte Carlo reference (GAE with lambda = 1, the same samples) is
  the unbiased policy gradient the vine also estimates; the cosine between the two tells how much GAE's bias alone
  moves the single-path target. The half-vs-half cosine ``h`` is reported as the reference's own quality; if the
  halves' noise is independent, the full reference's cosine to its noise-free direction is ``sqrt(2h / (1 + h))``.
- **Estimators**, each as a function of simulator steps (every ``env.step``: trunk and branch steps for the vine),
  ``R`` repeats with different seeds (the same seeds across configurations: common random numbers between them):
  single path, batches of 512 ... 64K steps on the YAML's ``n_envs``, the surrogate and Fisher as ``TRPO.train``
  builds them (``fisher_sample_fraction`` of the YAML); vine, a ``VineTRPO`` with the checkpoint's weights (same
  architecture, critic included), one ``collect_rollouts`` (trunk -> rollout set -> branches -> ``vine_batch``), the
  gradient of ``vine_batch.surrogate`` and the CG solution of ``VineTRPO._fisher_vector_product`` on the rollout set,
  with the CG settings of the reference (so that the two families differ only in their estimates). Baseline vine per
  task: the ``hyperparams/vine_trpo.yml`` entry for CartPole and Pendulum; for Hopper the package defaults (N 64, K 4,
  m 50, bootstrapped, trunk 1024) instead of the paper-sized entry (266K simulator steps per iteration, beyond this
  study's CPU budget). Then one change at a time (K, m, no bootstrap, no common random numbers) and a sweep of N
  with the trunk scaled along (``n_steps = max(trunk, N x trunk / N_baseline)``, the baseline's states per trunk step)
  for the cosine-vs-steps curve. Not run: ``action_sampling`` on CartPole (with 2 actions every K >= 2 rolls out
  every action and uses Eq. 15 whatever ``q`` is; K < 2 is rejected) and K on CartPole for the same reason;
  ``action_sampling="uniform"`` is for discrete spaces only.
- **Bias check.** Besides the mean cosine, each configuration stores the mean pairwise cosine ``p`` of its repeats
  (its self-consistency). If the estimates are their expectation plus independent noise, the cosine of that
  expectation to the reference's noise-free direction is about ``mean cosine / (sqrt(p) * sqrt(2h / (1 + h)))``
  (the "implied" column): near 1 for an estimator of the same direction, clearly below 1 for one that estimates
  another direction (a truncated Q, say), whatever its variance.
- **Cosines.** Three per estimate: the gradient's and the CG direction's in the actor's flat parameter space
  (``actor_parameters``, the log std included for Gaussians), and the CG direction's in the Fisher metric on
  ``metric_states`` of the reference's states, ``s1^T F s2 / sqrt(s1^T F s1 s2^T F s2)`` ("policy change"): the
  cosine of the first-order changes of the policy's outputs the two directions make, the geometry TRPO's trust region
  measures, whatever the parameterization. Euclidean cosines in parameter space flatter: on CartPole (two actions)
  every gradient is a weighted sum of the per-state gradients of one logit difference, which point in similar
  directions at nearby states, so any two gradients have a large cosine (one from randomly shuffled advantages had
  cosine 0.45 to the true one).
- **Vine settings not in the vine's YAML** come from the checkpoint's TRPO entry (the policy must be the same):
  gamma, gae_lambda, gSDE (Pendulum), CG steps and damping; ``fisher_sample_fraction`` is VineTRPO's default 1.0
  (the rollout set is small; single path keeps its YAML value, 0.1 on Hopper).

Each (task, checkpoint, configuration) is one result file (``reporting/results_io.py``) under
``benchmarks/results/vine_study/{task}/{checkpoint}/`` (written as it finishes, skipped when present, so an
interrupted run resumes), the reference's directions one small ``reference.npz`` beside its ``reference.json``.
``--report`` prints the tables (simulator steps needed to reach cosine 0.5 / 0.8 / 0.9 on the mean curve,
interpolated in log steps) and draws ``benchmarks/results/vine_study/{task}_{checkpoint}.png``; ``--readme`` writes
the tables into the docs' results page between ``<!-- vine-study:start -->`` and ``<!-- vine-study:end -->``. One
torch thread, DummyVecEnv throughout.

    OMP_NUM_THREADS=1 python -m vine_study --tasks CartPole-v1 Pendulum-v1
    python -m vine_study --quick          # tiny sizes, results under benchmarks/results/vine_study_quick
    python -m vine_study --report         # or --readme

(``python vine_study ARGS`` runs the same; the results made before this package record ``python
benchmarks/vine_study.py ARGS``, the single file it was split from, and those made while it was a folder of
``benchmarks/`` ``python -m benchmarks.vine_study ARGS``.)

The modules, by role: :mod:`~vine_study.plan` (what to estimate: the tasks' sizes, the configurations,
the seeds), :mod:`~vine_study.checkpoint` (the policies studied), :mod:`~vine_study.estimate`
(single-path and vine estimates of the directions), :mod:`~vine_study.reference` (the large-batch
reference and the cosines), :mod:`~vine_study.study` (running the configurations, the files) and
:mod:`~vine_study.report` (the tables, the plots, the results page's section).
"""
