"""The training loop: PaddleSeg's ``train`` with atomic checkpoints and exact resume.

Launched with ``python -m paddle.distributed.launch``, it trains data-parallel: each rank reads
its shard of every global batch, gradients are averaged across ranks (paddle.DataParallel),
evaluation is shared (each rank evaluates every N-th val image, the areas are summed), and
rank 0 alone logs and writes checkpoints; the logged loss is the mean over ranks.
"""
import contextlib
import dataclasses
import json
import os
import random
import shutil
import time
from collections import deque

import numpy as np
import paddle

from paddleseg.utils import distributed, logger
from paddleseg.utils.checkpoint import (TRAIN_STATE_FILE, CheckpointError, check_state_dict,
                                        checkpoint_iteration, model_dtypes, params_file,
                                        read_state_dict, read_train_state,
                                        safe_load_state_dict, save_checkpoint)
from paddleseg.utils.errors import UserError
from paddleseg.utils.fileio import (check_folder_target, remove_stale_temporaries,
                                    removed_if_left_empty, write_json)
from paddleseg.utils.progress import format_seconds
from . import metrics as M
from .infer import EvalOptions
from .train_data import ResumableBatches, fresh_seed, seed_step
from .val import WHOLE_IMAGE, accumulate_areas, describe, evaluate_metrics, warn_unsupported


def set_seed(seed):
    """Seed paddle, numpy and random so a run can be repeated."""
    if seed is None:
        return
    paddle.seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def loss_computation(logits_list, labels, losses):
    """Weighted sum of each logit's loss; returns the total and the per-term values."""
    if len(logits_list) != len(losses["types"]):
        raise ValueError(f"the model returns {len(logits_list)} logits but the loss config has "
                         f"{len(losses['types'])} types/coef; give one per logit")
    terms = [coef * loss_fn(logit, labels)
             for logit, loss_fn, coef in zip(logits_list, losses["types"], losses["coef"])]
    return sum(terms), terms


def resume(model, optimizer, resume_dir):
    """Load model and optimizer state (the LR schedule travels with the optimizer)."""
    state = read_state_dict(resume_dir, model_dtypes(model))
    check_state_dict(model, state, params_file(resume_dir))
    model.set_state_dict(state)
    opt_path = os.path.join(resume_dir, "model.pdopt")
    if not os.path.isfile(opt_path):
        raise CheckpointError(f"{opt_path} is missing; cannot resume the optimizer state")
    optimizer.set_state_dict(_rename_optimizer_state(safe_load_state_dict(opt_path), state, model))
    return checkpoint_iteration(resume_dir)


def _rename_optimizer_state(opt_state, saved_params, model):
    """Re-key optimizer state to ``model``'s parameter names.

    The state is keyed by parameter *names* (``conv2d_3.w_0_velocity_0``), which depend on how
    many layers the process had built before the model; a model built later in the same process
    has other names and paddle would refuse the state. The saved parameters keep their old
    names, so the structured keys both share give the mapping."""
    own = model.state_dict()
    renames = {}
    for key, tensor in saved_params.items():
        old = getattr(tensor, "name", None)
        if key in own and old and old != own[key].name:
            renames[old] = own[key].name
    if not renames:
        return opt_state
    olds = sorted(renames, key=len, reverse=True)
    out = {}
    for k, v in opt_state.items():
        for old in olds:
            if k.startswith(old + "_"):
                k = renames[old] + k[len(old):]
                break
        out[k] = v
    return out


def prune_old_checkpoints(queue, keep_max):
    while keep_max and len(queue) > keep_max:
        shutil.rmtree(queue.popleft(), ignore_errors=True)


def current_lr(optimizer):
    return float(optimizer.get_lr())


def _iter_number(name):
    """N for an ``iter_N`` entry, else None."""
    return int(name[5:]) if name.startswith("iter_") and name[5:].isdigit() else None


def _checkpoint_order(name):
    n = _iter_number(name)
    return (0, n, "") if n is not None else (1, 0, name)


def _announce_replacements(save_dir, start_iter, iters, save_interval, evaluates):
    """One line naming what in ``save_dir`` this run will write over (nothing is deleted)."""
    def written_by_this_run(name):
        n = _iter_number(name)
        if n is not None:
            return start_iter < n <= iters and (n % save_interval == 0 or n == iters)
        return name == "best_model" and evaluates and not start_iter

    existing = sorted((n for n in os.listdir(save_dir) if not n.startswith(".")), key=_checkpoint_order)
    replaced = [n for n in existing if written_by_this_run(n)]
    if start_iter:  # a resumed run continues its own folder: only later checkpoints are news
        if replaced:
            logger.info(f"{save_dir}: this resumed run will replace {', '.join(replaced)}")
    elif existing:
        logger.info(f"{save_dir} already holds {', '.join(existing)}; this fresh run will replace "
                    f"{', '.join(replaced) or 'none of them'} (--resume_model continues a run instead)")


def _best_so_far(save_dir):
    """(mIoU, iter) of the run's best_model/, for a resumed run; (-1, -1) when there is none."""
    path = os.path.join(save_dir, "best_model", "model_info.json")
    if not os.path.isfile(path):
        return -1.0, -1
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        return float(info["mIoU"]), int(info["iter"])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"cannot read {path} ({type(e).__name__}: {e}); move best_model "
                              "aside to resume without it") from None


def _restore_data_position(data, resume_dir, start_iter, seed):
    state = read_train_state(resume_dir)
    if state is None:  # written before train_state.json existed
        state = {"seed": data.seed, "epoch": start_iter // len(data),
                 "batches_done": start_iter % len(data)}
        logger.warning(f"{resume_dir} has no {TRAIN_STATE_FILE}: the data order continues at "
                       f"iteration {start_iter}, the random augmentation and dropout differ from "
                       "the interrupted run's")
    elif seed is not None and seed != state["seed"]:
        logger.warning(f"seed {seed} differs from the checkpoint's {state['seed']}: continuing "
                       "with the checkpoint's, as the interrupted run would have")
    if state.get("ranks", 1) != data.ranks:
        logger.warning(f"{resume_dir} was written by a run of {state.get('ranks', 1)} "
                       f"process(es), this one has {data.ranks}: each rank's share of the data "
                       "(and the global batch) differs, so the data order is not the "
                       "interrupted run's from here on")
    data.restore(state)


def _prepare_save_dir(save_dir, start_iter, iters, save_interval, evaluates):
    """Rank 0's part: make ``save_dir``, clear what killed runs left, say what gets replaced;
    returns the iter_N checkpoints already there, oldest first (for keep_checkpoint_max)."""
    os.makedirs(save_dir, exist_ok=True)
    remove_stale_temporaries(save_dir)
    _announce_replacements(save_dir, start_iter, iters, save_interval, evaluates)
    return deque(sorted((os.path.join(save_dir, d) for d in os.listdir(save_dir)
                         if 0 < (_iter_number(d) or 0) <= start_iter),
                        key=lambda p: _iter_number(os.path.basename(p))))


def _data_parallel(model, data):
    """The model every rank trains: paddle.DataParallel averages the gradients across ranks
    (and starts all ranks from rank 0's weights); the model itself in a single process."""
    if data.ranks == 1:
        return model
    distributed.barrier()  # rank 0 may still be preparing save_dir or evaluating
    logger.info(f"training on {data.ranks} ranks: {len(data)} batches of this rank's shard per "
                "epoch", every_rank=True)
    return paddle.DataParallel(model)


def train(model, train_dataset, val_dataset=None, optimizer=None, save_dir="output", iters=10000,
          batch_size=2, resume_model=None, save_interval=1000, log_iters=10, num_workers=0,
          use_vdl=False, losses=None, keep_checkpoint_max=5,
          test_config=None,
          # PaddleSeg's other keywords, accepted so that its scripts run; not implemented here, so
          # a value other than the default is reported (amp_level only matters with fp16)
          precision="fp32", amp_level="O1", profiler_options=None,
          to_static_training=False,
          # this project's own
          seed=None, extra_files=None, eval_max_images=None, extra_loss=None):
    """Train ``model`` for ``iters`` iterations; returns the best val mIoU (or None).

    A fresh run (no ``resume_model``) starts from nothing: it does not read what an earlier run
    left in ``save_dir``. ``seed`` fixes the data order, augmentation and dropout (without it a
    random seed is drawn); each ``iter_N`` keeps it with the data position, so a run resumed
    from there repeats the uninterrupted run exactly. ``batch_size`` is per rank, as in
    PaddleSeg: N ranks train on global batches of N * batch_size.
    ``extra_files``: {file name: writer(path)} added to every checkpoint directory (a pruned
    model needs none: its layer shapes travel inside ``model.pdparams``).
    ``extra_loss``: a callable ``(images, logits) -> loss tensor`` added to the config's losses
    every iteration (e.g. distillation from a teacher: :mod:`paddleseg.slim.distill`). It is not
    saved in checkpoints: a resumed run must be given the same one to repeat the uninterrupted
    run. ``test_config``: the evaluation options of PaddleSeg's config (aug_eval, is_slide,
    auc_roc, ...; core.infer.EvalOptions) used at every evaluation.
    """
    del amp_level  # PaddleSeg's, accepted for compatibility: only used with precision fp16
    if optimizer is None or losses is None:
        raise ValueError("train() needs an optimizer and a losses dict")
    warn_unsupported("train()", precision=(precision, "fp32"),
                     profiler_options=(profiler_options, None),
                     to_static_training=(to_static_training, False))
    eval_options = EvalOptions.from_config(test_config or {}) if val_dataset is not None \
        else WHOLE_IMAGE
    start_iter = checkpoint_iteration(resume_model) if resume_model else 0
    if start_iter >= iters:
        raise UserError(f"{resume_model} is at iteration {start_iter}, the run ends at {iters}: "
                        "nothing left to train (raise --iters to train further)")
    data = ResumableBatches(train_dataset, batch_size, num_workers,
                            fresh_seed() if seed is None else seed)
    if len(data) == 0:
        raise UserError(f"batch_size {batch_size} is larger than the training set "
                        f"({len(train_dataset)} images)")
    if resume_model:
        resume(model, optimizer, resume_model)
        _restore_data_position(data, resume_model, start_iter, seed)
        logger.info(f"resumed from {resume_model} at iter {start_iter}, lr {current_lr(optimizer):.6f}")
    check_folder_target(save_dir, "save_dir")
    main = distributed.is_main()  # only rank 0 touches save_dir
    # a failed run leaves no empty folder it made
    with removed_if_left_empty(save_dir) if main else contextlib.nullcontext():
        saved, best, writer = None, (-1.0, -1), None
        if main:
            saved = _prepare_save_dir(save_dir, start_iter, iters, save_interval,
                                      val_dataset is not None)
            best = _best_so_far(save_dir) if resume_model else (-1.0, -1)
            if use_vdl:
                from visualdl import LogWriter
                writer = LogWriter(save_dir)
        train_model = _data_parallel(model, data)
        model.train()
        it = start_iter
        avg_loss, reader_cost, batch_cost = 0.0, 0.0, 0.0
        run_start = time.time()
        batches = iter(data)
        tic = time.time()
        try:
            while it < iters:
                images, labels = next(batches)
                it += 1
                reader_cost += time.time() - tic
                seed_step(data.seed, it)  # dropout draws depend on (seed, iteration) only
                logits = train_model(images)
                loss, _ = loss_computation(logits, labels, losses)
                if extra_loss is not None:
                    loss = loss + extra_loss(images, logits)
                loss.backward()
                optimizer.step()
                optimizer.clear_grad()
                lr = current_lr(optimizer)  # the rate this iteration used (PaddleSeg logs this one)
                lr_sched = optimizer._learning_rate
                if isinstance(lr_sched, paddle.optimizer.lr.LRScheduler):
                    lr_sched.step()
                loss_value = float(loss)
                if not np.isfinite(loss_value):
                    raise FloatingPointError(f"loss became {loss_value} at iter {it}; lower the learning rate")
                avg_loss += loss_value
                batch_cost += time.time() - tic
                if it % log_iters == 0 or it == iters:
                    n = log_iters if it % log_iters == 0 else (it % log_iters)
                    per_iter = (time.time() - run_start) / max(it - start_iter, 1)
                    mean_loss = distributed.mean(avg_loss / n)  # every rank takes part
                    if main:
                        logger.info(f"[TRAIN] iter {it}/{iters}, loss {mean_loss:.4f}, "
                                    f"lr {lr:.6f}, batch_cost {batch_cost / n:.4f}s, "
                                    f"reader_cost {reader_cost / n:.5f}s, ips "
                                    f"{batch_size * data.ranks / max(batch_cost / n, 1e-9):.2f} "
                                    f"samples/s, ETA {format_seconds(per_iter * (iters - it))}")
                        if writer:
                            writer.add_scalar("Train/loss", mean_loss, it)
                            writer.add_scalar("Train/lr", lr, it)
                            writer.add_scalar("Train/batch_cost", batch_cost / n, it)
                    avg_loss, reader_cost, batch_cost = 0.0, 0.0, 0.0
                if it % save_interval == 0 or it == iters:
                    if main:
                        ckpt = os.path.join(save_dir, f"iter_{it}")
                        position = data.state()
                        save_checkpoint(ckpt, model, optimizer,
                                        {**(extra_files or {}),
                                         TRAIN_STATE_FILE: lambda p: write_json(p, position)})
                        # tagged with the rank in a job: a test can tell who wrote it
                        logger.info(f"saved checkpoint {ckpt}", every_rank=True)
                        if ckpt not in saved:
                            saved.append(ckpt)
                        prune_old_checkpoints(saved, keep_checkpoint_max)
                    if val_dataset is not None:  # every rank evaluates its share
                        best = _evaluate_and_keep_best(model, val_dataset, eval_max_images,
                                                       eval_options, save_dir,
                                                       it, best, extra_files, writer)
                    distributed.barrier()  # no rank runs ahead while rank 0 writes
                tic = time.time()
        finally:
            batches.close()  # stops the loader's reader thread or worker processes
            if writer:
                writer.close()
    return best[0] if best[0] >= 0 else None


class _Shard:
    """The images ``indices`` of a dataset, read as a dataset of their own."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices
        self.num_classes, self.ignore_index = dataset.num_classes, dataset.ignore_index

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


def evaluate_on_all_ranks(model, dataset, max_images=None, options=WHOLE_IMAGE):
    """``evaluate_metrics`` in a job of several ranks: rank r evaluates images r, r+N, ... and
    the per-class areas are summed, so the metrics are exactly those of one process evaluating
    every image (as PaddleSeg evaluates while training data-parallel). The AUC-ROC ranks every
    pixel's score at once: one process computes it (PaddleSeg's too), several leave it out."""
    if distributed.world_size() == 1:
        return evaluate_metrics(model, dataset, max_images, options=options)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    logger.info(f"evaluating {n} images on {distributed.world_size()} ranks"
                + describe(dataclasses.replace(options, auc_roc=False)))
    if options.auc_roc:
        logger.warning("test_config auc_roc: the AUC-ROC is computed by one process only; "
                       "evaluate with val.py for it")
    start = time.time()
    shard = _Shard(dataset, list(range(distributed.rank(), n, distributed.world_size())))
    areas = accumulate_areas(model, shard, options=dataclasses.replace(options, auc_roc=False))
    gathered = distributed.all_gather([a.tolist() for a in areas])
    result = M.summarize(*(np.sum([np.asarray(g[i], np.int64) for g in gathered], axis=0)
                           for i in range(3)))
    result["seconds"] = time.time() - start
    logger.info("metrics:\n" + M.format_table(result))
    return result


def _evaluate_and_keep_best(model, val_dataset, max_images, options, save_dir, it, best,
                            extra_files, writer):
    """Evaluate at iteration ``it`` (all ranks); rank 0 writes best_model/ when the mIoU beats
    ``best`` (mIoU, iter)."""
    result = evaluate_on_all_ranks(model, val_dataset, max_images, options)
    model.train()
    if result["mIoU"] > best[0]:
        best = (result["mIoU"], it)
        info = {"mIoU": best[0], "iter": it}
        if distributed.is_main():
            save_checkpoint(os.path.join(save_dir, "best_model"), model, None,
                            {**(extra_files or {}),
                             "model_info.json": lambda p: write_json(p, info)})
    logger.info(f"[EVAL] best mIoU {best[0]:.4f} at iter {best[1]}")
    if writer:
        writer.add_scalar("Evaluate/mIoU", result["mIoU"], it)
        writer.add_scalar("Evaluate/Acc", result["Acc"], it)
    return best
