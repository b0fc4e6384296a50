"""The retraining recipes of the benchmark's recovery phase (``prune_speedup.py --phase
recovery --recipes ...``): a name, its label in RESULTS.md, and its prune.py flags.

Kept apart from bench_recovery.py, which runs one unit and is part of every unit's cache key:
a unit's key holds its own flags, so adding a recipe here leaves the measured units of the
others cached.
"""

# name: (label, prune.py flags). "plain" is the benchmark's latency row as it retrains today.
RECIPES = {
    "plain": ("config schedule (as the row)", []),
    "finetune": ("finetune schedule", ["--retrain_schedule", "finetune"]),
    "distill": ("channel distillation", ["--distill", "channel"]),
    # Shu et al. 2021's setting for logit maps (temperature 4, loss weight 3): the softer target
    # and the larger weight against the defaults' T 1, weight 1
    "distill_t4": ("channel distillation, T 4, weight 3",
                   ["--distill", "channel", "--distill_temperature", "4", "--distill_weight", "3"]),
    "steps": ("2 prune steps", ["--prune_steps", "2"]),
    "steps3": ("3 prune steps", ["--prune_steps", "3"]),
    # the pruned model refitted by least squares to the unpruned one's conv outputs before
    # retraining (paddleseg.slim.reconstruct)
    "reconstruct": ("least-squares reconstruction", ["--reconstruct", "8"]),
    "combined": ("finetune + channel distillation + 2 steps",
                 ["--retrain_schedule", "finetune", "--distill", "channel", "--prune_steps", "2"]),
    # as long as the model was trained (the benchmark retrains a quarter of that): whether the
    # loss is the pruning's or the short retraining's. Its control fine-tunes as long.
    "long": ("4x retraining iterations", ["--retraining_iters", "4x"]),
    # whether a gentler schedule keeps the refit's head start instead of restarting at the
    # config's rate (its control: the unpruned model on the finetune schedule)
    "reconstruct_finetune": ("least-squares reconstruction, finetune schedule",
                             ["--reconstruct", "8", "--retrain_schedule", "finetune"]),
    "reconstruct_long": ("least-squares reconstruction, 4x retraining iterations",
                         ["--reconstruct", "8", "--retraining_iters", "4x"]),
}


def recipe_flags(name, retraining_iters):
    """Recipe ``name``'s prune.py flags for a row retrained ``retraining_iters`` iterations: a
    length given as a multiple of it ("4x") becomes that many iterations."""
    flags = list(RECIPES[name][1])
    for i in range(1, len(flags)):
        if flags[i - 1] == "--retraining_iters" and flags[i].endswith("x"):
            flags[i] = str(round(float(flags[i][:-1]) * retraining_iters))
    return flags
