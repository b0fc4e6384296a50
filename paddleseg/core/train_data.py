"""The training batches in an order that a resumed run can continue exactly.

Everything random in training is derived from one base seed and a position, never from a
stream that advanced with history:

- the sampler is PaddleSeg's (``DistributedBatchSampler``: this rank's share, drop_last, a
  shuffle seeded by the epoch number); a resumed run restarts it at the saved epoch and skips
  the batches already done in it. With N ranks, global batch k of an epoch is rank 0's batch k
  followed by rank 1's ...: when the set size is a multiple of N, the same images in the same
  order as batch k of one process whose batch is N times larger; every rank is at the same
  position;
- a sample's augmentation draws from numpy / ``random`` seeded by (seed, epoch, index), so it is
  the same in the main process or in any worker, straight or resumed;
- the paddle generator (dropout) is seeded by (seed, rank, iteration) before each step
  (``seed_step``): paddle's CPU generator state cannot be saved, only seeded.

So the whole random state of a run is ``ResumableBatches.state()``: three integers written as JSON
beside the checkpoint.
"""
import os
import pickle
import random

import numpy as np
import paddle


def derive_seed(*keys):
    """A well-mixed 32-bit seed from non-negative integers."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def fresh_seed():
    """A base seed for a run started without --seed (saved, so its resume is still exact)."""
    return int.from_bytes(os.urandom(4), "little") >> 1


def seed_step(seed, iteration):
    """Seed the paddle generators (dropout) for one training step."""
    paddle.seed(derive_seed(seed, 1, paddle.distributed.get_rank(), iteration))


class ResumableBatchSampler(paddle.io.DistributedBatchSampler):
    """PaddleSeg's batch sampler that can start inside an epoch; each index comes out as
    (epoch, index) so that the sample reader can seed the sample's augmentation.

    ``num_replicas`` / ``rank``: the job's ranks and this one's (default: from the launcher's
    environment, one rank when not launched)."""

    def __init__(self, dataset, batch_size, num_replicas=None, rank=None):
        super().__init__(dataset, batch_size=batch_size, num_replicas=num_replicas, rank=rank,
                         shuffle=True, drop_last=True)
        self._skip = 0

    def start_at(self, epoch, batches_done):
        self.set_epoch(epoch)
        self._skip = batches_done

    def __iter__(self):
        epoch, skip = self.epoch, self._skip  # the parent shuffles with self.epoch, then adds 1
        self._skip = 0
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield [(epoch, index) for index in batch]


class _ReadFailure:
    def __init__(self, exc):
        try:
            self.pickled = pickle.dumps(exc)
        except Exception:  # noqa: BLE001  (an unpicklable exception still gets its message)
            self.pickled = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))


class _SampleReader(paddle.io.Dataset):
    """Reads sample (epoch, index) with its random draws seeded by (seed, epoch, index).

    A sample that raises becomes a _ReadFailure batch, re-raised by ``ResumableBatches``: paddle's
    DataLoader reads in a thread, and an exception there kills the thread and leaves the
    training loop waiting forever (num_workers=0) or fails with an unrelated SystemError and a
    worker traceback (num_workers>0)."""

    def __init__(self, dataset, seed):
        self.dataset = dataset
        self.seed = seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        # with num_workers=0 this runs in the loader's thread of the main process: leave the
        # global generators as they were
        np_state, py_state = np.random.get_state(), random.getstate()
        sample_seed = derive_seed(self.seed, 0, epoch, index)
        np.random.seed(sample_seed)
        random.seed(sample_seed)
        try:
            return self.dataset[index]
        except Exception as e:  # noqa: BLE001  (re-raised by ResumableBatches)
            return _ReadFailure(e)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def collate(batch):
    """Stack images and labels; the rest of each sample (paths, transform records) is dropped."""
    for b in batch:
        if isinstance(b, _ReadFailure):  # a 1-D "image batch"; the label bytes hold the error
            return np.zeros([1], np.float32), np.frombuffer(b.pickled, np.uint8).copy()
    imgs = np.stack([b["img"] for b in batch])
    labels = np.stack([b["label"] for b in batch])
    return imgs, labels


class ResumableBatches:
    """Endless training batches that know where they are: (epoch, batches done in it).

    The position counts batches the training loop has *taken*, not those the loader has
    prefetched, so ``state()`` after step N is where step N+1 starts. All ranks of a job take
    their batches in step, so one position serves them all; ``state()`` also records how many
    ranks there were, since the shards (and the global batch) depend on it."""

    def __init__(self, dataset, batch_size, num_workers, seed, num_replicas=None, rank=None):
        self.seed = seed
        self.epoch, self.batches_done = 0, 0
        self.sampler = ResumableBatchSampler(dataset, batch_size, num_replicas, rank)
        self.reader = _SampleReader(dataset, seed)
        self.loader = paddle.io.DataLoader(self.reader, batch_sampler=self.sampler,
                                           num_workers=num_workers, collate_fn=collate,
                                           return_list=True)

    def __len__(self):
        """Batches per epoch."""
        return len(self.sampler)

    @property
    def ranks(self):
        return self.sampler.nranks

    def state(self):
        epoch, done = self.epoch, self.batches_done
        if done >= len(self):
            epoch, done = epoch + 1, 0
        state = {"seed": self.seed, "epoch": epoch, "batches_done": done}
        if self.ranks > 1:  # the shards depend on it (files of one process stay as they were)
            state["ranks"] = self.ranks
        return state

    def restore(self, state):
        self.seed, self.epoch, self.batches_done = state["seed"], state["epoch"], state["batches_done"]
        self.reader.seed = self.seed

    def __iter__(self):
        self.sampler.start_at(self.epoch, self.batches_done)
        while True:
            for images, labels in self.loader:
                if len(images.shape) == 1:
                    raise pickle.loads(labels.numpy().tobytes())
                self.batches_done += 1
                yield images, labels
            self.epoch, self.batches_done = self.epoch + 1, 0
