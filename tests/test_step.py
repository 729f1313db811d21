"""The training step as parts (toolkit/engine/step.py): the checkpoint's keys they write, a new
part's state saved and restored through the one interface, and accumulation's boundaries."""
import logging

import pytest
import torch

from toolkit.engine.config import make_config
from toolkit.engine.dist import DistEnv
from toolkit.engine.optim import build_optimizer
from toolkit.engine.step import Part, Step, build_step

ENV = DistEnv(0, 0, 1, torch.device("cpu"))


class Counter(Part):
    """An after-step update with state (as EMA weights would be)."""
    name = "counter"

    def __init__(self):
        self.n = 0

    def __call__(self, at):
        self.n += 1

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, saved):
        self.n = saved["n"] if saved else 0


def make(grad_accum=1, after=()):
    cfg = make_config("resnet20", num_classes=4, image_size=16, lr=0.1, grad_accum=grad_accum, data="synthetic")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    optimizer = build_optimizer(model, cfg)
    step = build_step(cfg, ENV, model, optimizer, logging.getLogger("test"))
    step = Step(step.transform, step.forward, step.backward, step.optimizer, after)
    step.net = model
    return step, model


def batch(i):
    g = torch.Generator().manual_seed(i)
    return torch.randn(2, 3, 16, 16, generator=g), torch.randint(0, 4, (2,), generator=g)


def test_the_parts_write_the_checkpoints_optimizer_and_scaler_keys_and_a_new_part_its_own():
    step, model = make(after=[Counter()])
    for b in range(3):
        step(*batch(b), epoch=0, batch=b, batches=3, grad_accum=1)
    saved = step.state_dict()
    assert set(saved) == {"optimizer", "scaler", "counter"} and saved["counter"] == {"n": 3}
    assert saved["optimizer"]["state"]  # momentum buffers
    again, _ = make(after=[Counter()])
    again.load_state_dict(saved)
    assert again.after[0].n == 3
    assert again.optimizer.optimizer.state_dict()["state"][0]["momentum_buffer"].equal(
        saved["optimizer"]["state"][0]["momentum_buffer"])
    older, _ = make(after=[Counter()])
    older.load_state_dict({k: v for k, v in saved.items() if k != "counter"})  # a checkpoint before the part
    assert older.after[0].n == 0


def test_the_optimizer_steps_at_each_accumulations_end_and_the_after_updates_follow():
    counter = Counter()
    step, model = make(grad_accum=2, after=[counter])
    before = model[1].weight.detach().clone()
    stepped = [step(*batch(b), epoch=0, batch=b, batches=5, grad_accum=2)[2] for b in range(5)]
    assert stepped == [False, True, False, True, True]  # the epoch's last batch ends an accumulation
    assert step.count == 3 and counter.n == 3 and not model[1].weight.equal(before)


def test_a_part_may_not_take_a_key_of_the_checkpoint_or_anothers():
    class Clash(Part):
        name = "model"
    with pytest.raises(ValueError):
        make(after=[Clash()])
    with pytest.raises(ValueError):
        make(after=[Counter(), Counter()])
