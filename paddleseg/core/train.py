"""The training loop: PaddleSeg's ``train`` with atomic checkpoints and exact resume."""
import json
import os
import pickle
import random
import shutil
import time
from collections import deque

import numpy as np
import paddle

from paddleseg.utils import logger
from paddleseg.utils.checkpoint import CheckpointError, read_state_dict, check_state_dict, save_checkpoint
from paddleseg.utils.fileio import write_json
from paddleseg.utils.progress import format_seconds
from .val import evaluate_metrics


def set_seed(seed):
    """Seed paddle, numpy and random so a run can be repeated."""
    if seed is None:
        return
    paddle.seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def collate(batch):
    """Stack images and labels; the rest of each sample (paths, transform records) is dropped."""
    for b in batch:
        if isinstance(b, _ReadFailure):  # a 1-D "image batch"; the label bytes hold the error
            return np.zeros([1], np.float32), np.frombuffer(b.pickled, np.uint8).copy()
    imgs = np.stack([b["img"] for b in batch])
    labels = np.stack([b["label"] for b in batch])
    return imgs, labels


class _ReadFailure:
    def __init__(self, exc):
        try:
            self.pickled = pickle.dumps(exc)
        except Exception:  # noqa: BLE001  (an unpicklable exception still gets its message)
            self.pickled = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))


class _CatchReadErrors(paddle.io.Dataset):
    """A sample that raises becomes a _ReadFailure batch, re-raised by _RaisingLoader.

    paddle's DataLoader reads in a thread: an exception there kills the thread and leaves the
    training loop waiting forever (num_workers=0) or fails with an unrelated SystemError and a
    worker traceback (num_workers>0)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        try:
            return self.dataset[idx]
        except Exception as e:  # noqa: BLE001  (re-raised by _RaisingLoader)
            return _ReadFailure(e)


class _RaisingLoader:
    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            if len(images.shape) == 1:
                raise pickle.loads(labels.numpy().tobytes())
            yield images, labels


def make_loader(dataset, batch_size, num_workers, seed=None, shuffle=True):
    sampler = paddle.io.DistributedBatchSampler(dataset, batch_size=batch_size, shuffle=shuffle,
                                                drop_last=True)

    def init_worker(worker_id):
        np.random.seed((seed or 0) + worker_id)
        random.seed((seed or 0) + worker_id)

    loader = paddle.io.DataLoader(_CatchReadErrors(dataset), batch_sampler=sampler,
                                  num_workers=num_workers, collate_fn=collate,
                                  worker_init_fn=init_worker, return_list=True)
    return _RaisingLoader(loader)


def loss_computation(logits_list, labels, losses):
    """Weighted sum of each logit's loss; returns the total and the per-term values."""
    if len(logits_list) != len(losses["types"]):
        raise ValueError(f"the model returns {len(logits_list)} logits but the loss config has "
                         f"{len(losses['types'])} types/coef; give one per logit")
    terms = [coef * loss_fn(logit, labels)
             for logit, loss_fn, coef in zip(logits_list, losses["types"], losses["coef"])]
    return sum(terms), terms


def iteration_of(resume_dir):
    name = os.path.basename(os.path.normpath(resume_dir))
    if not name.startswith("iter_") or not name[5:].isdigit():
        raise CheckpointError(f"--resume_model must be a save_dir/iter_N directory, got {resume_dir}")
    return int(name[5:])


def resume(model, optimizer, resume_dir):
    """Load model and optimizer state (the LR schedule travels with the optimizer)."""
    state = read_state_dict(resume_dir)
    check_state_dict(model, state, resume_dir)
    model.set_state_dict(state)
    opt_path = os.path.join(resume_dir, "model.pdopt")
    if not os.path.isfile(opt_path):
        raise CheckpointError(f"{opt_path} is missing; cannot resume the optimizer state")
    optimizer.set_state_dict(_rename_optimizer_state(paddle.load(opt_path), state, model))
    return iteration_of(resume_dir)


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


def train(model, train_dataset, val_dataset=None, optimizer=None, save_dir="output", iters=10000,
          batch_size=2, resume_model=None, save_interval=1000, log_iters=10, num_workers=0,
          use_vdl=False, losses=None, keep_checkpoint_max=5, seed=None, extra_files=None,
          eval_max_images=None, **_ignored):
    """Train ``model`` for ``iters`` iterations; returns the best val mIoU (or None).

    ``extra_files``: {file name: writer(path)} added to every checkpoint directory (the pruning
    engine stores the channel plan of a pruned model there).
    """
    if optimizer is None or losses is None:
        raise ValueError("train() needs an optimizer and a losses dict")
    nranks = paddle.distributed.get_world_size()
    local_rank = paddle.distributed.get_rank()
    start_iter = resume(model, optimizer, resume_model) if resume_model else 0
    if start_iter:
        logger.info(f"resumed from {resume_model} at iter {start_iter}, lr {current_lr(optimizer):.6f}")
    os.makedirs(save_dir, exist_ok=True)
    train_model = model
    if nranks > 1:
        paddle.distributed.fleet.init(is_collective=True)
        optimizer = paddle.distributed.fleet.distributed_optimizer(optimizer)
        train_model = paddle.distributed.fleet.distributed_model(model)
    loader = make_loader(train_dataset, batch_size, num_workers, seed)
    if len(loader) == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the training set ({len(train_dataset)} images)")
    writer = None
    if use_vdl and local_rank == 0:
        from visualdl import LogWriter
        writer = LogWriter(save_dir)

    best_miou, best_iter = -1.0, -1
    best_info = os.path.join(save_dir, "best_model", "model_info.json")
    if os.path.isfile(best_info):
        with open(best_info) as f:
            info = json.load(f)
        best_miou, best_iter = info.get("mIoU", -1.0), info.get("iter", -1)
    saved = deque(sorted((os.path.join(save_dir, d) for d in os.listdir(save_dir)
                          if d.startswith("iter_") and d[5:].isdigit() and int(d[5:]) <= start_iter),
                         key=lambda p: int(os.path.basename(p)[5:])))
    model.train()
    it = start_iter
    avg_loss, reader_cost, batch_cost = 0.0, 0.0, 0.0
    tic = time.time()
    run_start_iter, run_start = start_iter, time.time()
    while it < iters:
        for images, labels in loader:
            it += 1
            if it > iters:
                break
            reader_cost += time.time() - tic
            logits = train_model(images)
            loss, _ = loss_computation(logits, labels, losses)
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
                per_iter = (time.time() - run_start) / max(it - run_start_iter, 1)
                if local_rank == 0:
                    logger.info(f"[TRAIN] iter {it}/{iters}, loss {avg_loss / n:.4f}, "
                                f"lr {lr:.6f}, batch_cost {batch_cost / n:.4f}s, "
                                f"reader_cost {reader_cost / n:.5f}s, "
                                f"ips {batch_size / max(batch_cost / n, 1e-9):.2f} samples/s, "
                                f"ETA {format_seconds(per_iter * (iters - it))}")
                    if writer:
                        writer.add_scalar("Train/loss", avg_loss / n, it)
                        writer.add_scalar("Train/lr", lr, it)
                        writer.add_scalar("Train/batch_cost", batch_cost / n, it)
                avg_loss, reader_cost, batch_cost = 0.0, 0.0, 0.0
            if (it % save_interval == 0 or it == iters) and local_rank == 0:
                ckpt = os.path.join(save_dir, f"iter_{it}")
                save_checkpoint(ckpt, model, optimizer, extra_files)
                if ckpt not in saved:
                    saved.append(ckpt)
                prune_old_checkpoints(saved, keep_checkpoint_max)
                if val_dataset is not None:
                    result = evaluate_metrics(model, val_dataset, eval_max_images)
                    model.train()
                    if result["mIoU"] > best_miou:
                        best_miou, best_iter = result["mIoU"], it
                        save_checkpoint(os.path.join(save_dir, "best_model"), model, None,
                                        {**(extra_files or {}),
                                         "model_info.json": lambda p: write_json(p, {"mIoU": best_miou, "iter": it})})
                    logger.info(f"[EVAL] best mIoU {best_miou:.4f} at iter {best_iter}")
                    if writer:
                        writer.add_scalar("Evaluate/mIoU", result["mIoU"], it)
                        writer.add_scalar("Evaluate/Acc", result["Acc"], it)
            tic = time.time()
    if writer:
        writer.close()
    return best_miou if best_miou >= 0 else None
