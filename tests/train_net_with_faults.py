"""train_net.py with faults injected and observations recorded, for tests/test_reliability.py.

Runs ``train_net.invoke_main()`` (same command line) after applying what these environment
variables ask for:

D2_EDWPOSE_TEST_KILL_AFTER_ITER=k     SIGKILL this process right after iteration k (and the
                                      checkpoint that iteration may have written)
D2_EDWPOSE_TEST_KILL_DURING_SAVE=name SIGKILL this process half-way through writing the
                                      checkpoint file ``name`` (e.g. model_0000005.pth)
D2_EDWPOSE_TEST_BATCH_LOG=path        append one JSON line per training batch drawn, to
                                      ``path.rank<r>``: [[file name, image digest], ...]
D2_EDWPOSE_TEST_RANK_STATE=folder     after training, save each rank's model state_dict (and
                                      whether it trained under DistributedDataParallel) to
                                      ``folder/rank<r>.pth``

Everything is applied at import, outside the ``__main__`` guard, so that processes started
by ``launch`` (spawned, they import this file as ``__mp_main__``) get it too.
"""
import hashlib
import io
import json
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_net  # noqa: E402  (the repository root is on sys.path only from here)
from detectron2.engine import HookBase  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from d2_edwpose.data.train_loader import ResumableTrainLoader  # noqa: E402
from d2_edwpose.engine import Trainer  # noqa: E402


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAfterIteration(HookBase):
    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            _kill_self()


class _SaveRankState(HookBase):
    def __init__(self, folder):
        self.folder = folder

    def after_train(self):
        model = self.trainer.model
        state = {
            "ddp": isinstance(model, torch.nn.parallel.DistributedDataParallel),
            "world_size": comm.get_world_size(),
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        }
        torch.save(state, os.path.join(self.folder, f"rank{comm.get_rank()}.pth"))


_build_hooks = Trainer.build_hooks


def _build_hooks_with_faults(self):
    hooks = _build_hooks(self)
    if "D2_EDWPOSE_TEST_RANK_STATE" in os.environ:
        hooks.append(_SaveRankState(os.environ["D2_EDWPOSE_TEST_RANK_STATE"]))
    if "D2_EDWPOSE_TEST_KILL_AFTER_ITER" in os.environ:
        # Last, so that the checkpointer and the writers have run for this iteration.
        hooks.append(_KillAfterIteration(int(os.environ["D2_EDWPOSE_TEST_KILL_AFTER_ITER"])))
    return hooks


Trainer.build_hooks = _build_hooks_with_faults

if "D2_EDWPOSE_TEST_KILL_DURING_SAVE" in os.environ:
    _save = torch.save
    _victim = os.environ["D2_EDWPOSE_TEST_KILL_DURING_SAVE"]

    def _save_and_die_half_way(obj, f, *args, **kwargs):
        # fvcore passes the open file; an atomic writer's temporary file carries the name too.
        if _victim in os.path.basename(getattr(f, "name", "")):
            buffer = io.BytesIO()
            _save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: buffer.tell() // 2])
            f.flush()
            _kill_self()
        return _save(obj, f, *args, **kwargs)

    torch.save = _save_and_die_half_way

if "D2_EDWPOSE_TEST_BATCH_LOG" in os.environ:
    _iter = ResumableTrainLoader.__iter__

    def _iter_and_record(self):
        log = f"{os.environ['D2_EDWPOSE_TEST_BATCH_LOG']}.rank{comm.get_rank()}"
        for batch in _iter(self):
            record = [
                [os.path.basename(d["file_name"]), hashlib.sha1(d["image"].numpy()).hexdigest()]
                for d in batch
            ]
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")
            yield batch

    ResumableTrainLoader.__iter__ = _iter_and_record


if __name__ == "__main__":
    train_net.invoke_main()
