"""Engine pieces that need no training run: LR schedule, configuration, checkpoints, signals."""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import run_tool
from toolkit.engine import checkpoint
from toolkit.engine.config import from_dict, make_config, override
from toolkit.engine.evaluation import per_class_table
from toolkit.engine.lr import get_lr
from toolkit.errors import UserError


def cfg(**kw):
    return make_config("resnet18", **kw)


def test_multistep_and_step_drop_at_absolute_epochs():
    c = cfg(lr=0.1, lr_schedule="multistep", lr_step_epochs=(30, 60), epochs=90)
    assert [get_lr(c, t) for t in (0, 29.99, 30, 59.5, 60, 89)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    s = cfg(lr=1.0, lr_schedule="step", lr_step_epochs=(2,), lr_factor=0.5, epochs=10)
    assert [get_lr(s, t) for t in (0, 1.9, 2, 4.5, 6)] == pytest.approx([1, 1, 0.5, 0.25, 0.125])


def test_warmup_then_cosine_poly_linear():
    c = cfg(lr=0.4, lr_schedule="cosine", warmup_epochs=2, epochs=12)
    assert get_lr(c, 1.0) == pytest.approx(0.2)
    assert get_lr(c, 2.0) == pytest.approx(0.4)
    assert get_lr(c, 7.0) == pytest.approx(0.2)       # half way through the cosine
    assert get_lr(c, 12.0) == pytest.approx(0.0, abs=1e-12)
    p = cfg(lr=1.0, lr_schedule="poly", poly_power=2, epochs=10)
    assert get_lr(p, 5) == pytest.approx(0.25)
    lin = cfg(lr=1.0, lr_schedule="linear", epochs=10)
    assert get_lr(lin, 7.5) == pytest.approx(0.25)


def test_a_new_lr_at_resume_is_constant_from_there_unless_a_schedule_is_given():
    c = override(cfg(lr=0.1, lr_schedule="multistep", lr_step_epochs=(30, 60), epochs=90),
                 lr=1e-3, lr_from_epoch=30.5, lr_schedule="constant")
    assert {get_lr(c, t) for t in (30.5, 45, 61, 89)} == {1e-3}
    c2 = override(c, lr_schedule="multistep", lr_step_epochs=(60,))
    assert get_lr(c2, 59) == pytest.approx(1e-3) and get_lr(c2, 60) == pytest.approx(1e-4)


def test_config_takes_recipe_defaults_and_rejects_unknown_or_bad_values():
    c = make_config("alexnet")
    assert c.prefix == "alexnet" and c.lr > 0 and c.epochs >= 1
    assert make_config("alexnet", lr=0.5, epochs=None).lr == 0.5
    with pytest.raises(UserError, match="unknown configuration key"):
        make_config("alexnet", lrr=0.1)
    with pytest.raises(UserError, match="--optimizer"):
        make_config("alexnet", optimizer="lbfgs")
    with pytest.raises(UserError, match="unknown recipe|not a recipe|recipe"):
        make_config("resnet9000")
    round_trip = from_dict(checkpoint_dict := dict(vars(c)))
    assert round_trip == c and checkpoint_dict["lr_step_epochs"] == c.lr_step_epochs


def test_checkpoint_round_trip_is_weights_only_loadable(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = checkpoint.checkpoint_path(str(tmp_path), "r", 3)
    assert path.endswith("r-0003.pt")
    checkpoint.save(path, {"model": model.state_dict(), "epoch": 3, "config": {"lr": 0.1}})
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 3 and state["version"] == checkpoint.VERSION
    assert torch.equal(state["model"]["weight"], model.weight.detach())
    assert [p for p in os.listdir(tmp_path)] == ["r-0003.pt"]


def test_find_prefers_newest_and_lists_what_exists(tmp_path):
    d = str(tmp_path)
    for e, b in [(1, 0), (2, 0), (2, 17)]:
        checkpoint.save(checkpoint.checkpoint_path(d, "run", e, b), {"epoch": e})
    assert checkpoint.find(d, None, None).endswith("run-0002-b000017.pt")
    assert checkpoint.find(d, "run", 1).endswith("run-0001.pt")
    with pytest.raises(UserError, match=r"epochs saved: 1, 2; interrupted: 2\+17 batches"):
        checkpoint.find(d, "run", 7)
    checkpoint.save(checkpoint.checkpoint_path(d, "other", 1), {"epoch": 1})
    with pytest.raises(UserError, match="several runs"):
        checkpoint.find(d, None, None)
    with pytest.raises(UserError, match="no checkpoints"):
        checkpoint.find(str(tmp_path / "empty"), None, None)


def test_prune_keeps_the_newest_epochs_and_drops_older_stops(tmp_path):
    d = str(tmp_path)
    for e, b in [(1, 0), (1, 5), (2, 0), (3, 0)]:
        checkpoint.save(checkpoint.checkpoint_path(d, "run", e, b), {"epoch": e})
    checkpoint.prune(d, "run", 2, (3, 0))
    assert sorted(os.listdir(d)) == ["run-0002.pt", "run-0003.pt"]


def test_unreadable_checkpoint_is_a_user_error(tmp_path):
    bad = tmp_path / "x-0001.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        checkpoint.load(str(bad))


WRITER = r"""
import sys, torch
from toolkit.engine import checkpoint
path = sys.argv[1]
i = 0
while True:
    i += 1
    checkpoint.save(path, {"model": {"w": torch.full((40_000_000,), float(i))}, "epoch": i})
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    path = str(tmp_path / "run-0001.pt")
    checkpoint.save(path, {"model": {"w": torch.zeros(3)}, "epoch": 0})
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path])
    deadline = time.time() + 60
    while not glob.glob(str(tmp_path / ".run-0001.pt.tmp-*")) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(path, weights_only=True)  # the previous (or a complete newer) version
    w = state["model"]["w"]
    assert torch.equal(w, torch.full_like(w, float(state["epoch"]))) or state["epoch"] == 0
    assert [n for n in os.listdir(tmp_path) if not n.startswith(".")] == ["run-0001.pt"]
    assert checkpoint.list_checkpoints(str(tmp_path)) == {"run": {(1, 0): path}}


def test_per_class_table_from_a_confusion_matrix():
    t = per_class_table([[3, 1, 0], [0, 2, 0], [1, 0, 0]], ["a", "b", "c"])
    assert list(t["support"]) == [4, 2, 1] and list(t["predicted"]) == [4, 3, 0]
    assert t["precision"].tolist() == pytest.approx([0.75, 2 / 3, 0.0])
    assert t["recall"].tolist() == pytest.approx([0.75, 1.0, 0.0])
    assert t["f1"].tolist() == pytest.approx([0.75, 0.8, 0.0])


@pytest.mark.parametrize("args, message", [
    (["tools/train.py", "--recipe", "nonet"], "nonet"),
    (["tools/train.py", "--recipe", "resnet18", "--data", "/nonexistent/ds"], "/nonexistent/ds"),
    (["tools/train.py", "--recipe", "resnet18", "--lr", "-1"], "--lr"),
    (["tools/train.py", "--recipe", "resnet18", "--bogus"], "--bogus"),
    (["tools/resume.py", "--checkpoints-dir", "/nonexistent/ck"], "no checkpoints"),
    (["tools/evaluate.py", "--checkpoints-dir", "/nonexistent/ck"], "no checkpoints"),
])
def test_user_mistakes_are_one_line_and_exit_2(args, message, tmp_path):
    extra = ["--logs-dir", tmp_path / "logs", "--checkpoints-dir", tmp_path / "ck"] if "train" in args[0] else []
    proc = run_tool(*args, *extra, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and message in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1, proc.stderr


SIGNALS = r"""
import os, signal, time
from toolkit.engine import signals
stop = signals.StopRequest().install()
for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):  # Ctrl-C, then torchrun forwarding it
    os.kill(os.getpid(), sig)
    time.sleep(0.05)
print("alive", stop.requested, flush=True)
time.sleep(signals.GRACE + 0.3)
os.kill(os.getpid(), signal.SIGINT)  # a person's second Ctrl-C
time.sleep(2)
print("still alive", flush=True)
"""


def test_forwarded_signals_are_one_request_and_a_later_ctrl_c_exits_at_once():
    proc = subprocess.run([sys.executable, "-c", SIGNALS], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["alive True"], proc.stdout + proc.stderr
    assert proc.returncode == 130 and "second Ctrl-C: exiting now" in proc.stderr
    assert proc.stderr.count("stopping at the end of this step") == 1


def test_recipe_eval_resize_and_lighting_follow_the_image_size_and_the_paper():
    assert make_config("resnet50").eval_resize == 256
    assert make_config("resnet18", image_size=64).eval_resize == 73   # 256/224 of 64
    assert make_config("resnet18", image_size=64, eval_resize=64).eval_resize == 64
    assert make_config("resnet20").eval_resize == 32                  # CIFAR: no resize-and-crop
    assert make_config("alexnet").pca_lighting == 0.1 and make_config("resnet50").pca_lighting == 0.0


def test_a_stop_asked_during_an_epochs_last_step_ends_with_that_epochs_checkpoint(tmp_path):
    import logging
    from toolkit.benchmarks.train import SyntheticLoader, make_batches
    from toolkit.engine import dist
    from toolkit.engine.trainer import Trainer

    class StopAtStep:  # `requested` is read once per step
        def __init__(self, step):
            self.reads, self.step = 0, step

        @property
        def requested(self):
            self.reads += 1
            return self.reads >= self.step

    c = make_config("resnet20", batch_size=4, epochs=3, num_classes=10, data="synthetic",
                    checkpoints_dir=str(tmp_path), prefix="s")
    env = dist.setup()
    loader = SyntheticLoader(make_batches(c, env.device), steps=5)
    trainer = Trainer(c, env, logging.getLogger("test"), stop=StopAtStep(5), loaders=(loader, None))
    result = trainer.fit()
    assert result["stopped"] and (result["epoch"], result["batch"]) == (1, 0)
    assert sorted(os.listdir(tmp_path)) == ["s-0001.pt"]
    # a stop asked mid-epoch is seen one step later, at the same step on every rank
    other = tmp_path / "mid"
    c2 = override(c, checkpoints_dir=str(other))
    trainer = Trainer(c2, env, logging.getLogger("test"), stop=StopAtStep(7), loaders=(loader, None))
    result = trainer.fit()
    assert (result["epoch"], result["batch"]) == (1, 3)
    assert sorted(os.listdir(other)) == ["s-0001-b000003.pt", "s-0001.pt"]


def test_a_new_run_never_overwrites_an_earlier_runs_checkpoints(tmp_path):
    ck = tmp_path / "ck"
    checkpoint.save(checkpoint.checkpoint_path(str(ck), "r", 1), {"epoch": 1})
    before = (ck / "r-0001.pt").read_bytes()
    proc = run_tool("tools/train.py", "--recipe", "resnet20", "--prefix", "r", "--checkpoints-dir", ck,
                    "--logs-dir", tmp_path / "logs", "--num-epochs", "3", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"Error: {ck}/ already holds checkpoints of a run named 'r': continue it with tools/resume.py "
        "--prefix r, start another with --prefix NAME, or delete them"]
    assert (ck / "r-0001.pt").read_bytes() == before and not (tmp_path / "logs").exists()
    # MXNet's flag names work too: --load-epoch (resume.py), --num-epochs (train.py, above)
    proc = run_tool("tools/resume.py", "--load-epoch", "7", "--checkpoints-dir", ck, check=False)
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr and "epochs saved: 1" in proc.stderr


def test_train_and_val_split_flags_choose_the_record_files(tmp_path):
    from toolkit import recordio
    data = tmp_path / "d"
    data.mkdir()
    with recordio.IndexedRecordWriter(str(data / "x_train.idx"), str(data / "x_train.rec")) as w:
        w.write_idx(0, recordio.pack((0, 0.0, 0, 0), b"\xff\xd8"))
    proc = run_tool("tools/train.py", "--recipe", "resnet20", "--data", data, "--train-split", "trainval",
                    "--checkpoints-dir", tmp_path / "ck", "--logs-dir", tmp_path / "logs", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].endswith(
        f"Error: {data}: no .rec files for split 'trainval' (found: x_train); "
        "a split S is S.rec, NAME_S.rec or S-00000.rec")


def test_resume_takes_optimizer_state_from_the_checkpoint_and_hyperparameters_from_the_flags(tmp_path):
    import logging
    from toolkit.benchmarks.train import SyntheticLoader, make_batches
    from toolkit.engine import dist
    from toolkit.engine.trainer import Trainer
    c = make_config("resnet20", batch_size=4, epochs=1, num_classes=10, data="synthetic",
                    checkpoints_dir=str(tmp_path), prefix="o")
    env = dist.setup()
    loader = SyntheticLoader(make_batches(c, env.device), steps=2)
    Trainer(c, env, logging.getLogger("test"), loaders=(loader, None)).fit()
    state = checkpoint.load(str(tmp_path / "o-0001.pt"))
    c2 = override(c, epochs=2, momentum=0.5, weight_decay=0.0, amp="fp16")  # fp16: no scaler state saved
    t = Trainer(c2, env, logging.getLogger("test"), state=state, loaders=(loader, None))
    assert [g["momentum"] for g in t.optimizer.param_groups] == [0.5, 0.5]
    assert [g["weight_decay"] for g in t.optimizer.param_groups] == [0.0, 0.0]
    assert t.optimizer.state  # the momentum buffers came back
    with pytest.raises(UserError, match=r"--optimizer: the checkpoint's optimizer state is for optimizer=sgd"):
        Trainer(override(c, epochs=2, optimizer="adam"), env, logging.getLogger("test"), state=state,
                loaders=(loader, None))


def test_fewer_classes_than_the_dataset_lists_is_one_clear_error(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "classes.tsv").write_text("0\ta\n1\tb\n2\tc\n")
    proc = run_tool("tools/train.py", "--recipe", "resnet20", "--data", data, "--num-classes", "2",
                    "--checkpoints-dir", tmp_path / "ck", "--logs-dir", tmp_path / "logs", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].endswith(
        f"Error: --num-classes 2: {data}/classes.tsv lists 3 classes; leave the flag out to use them all")


@pytest.mark.parametrize("flag", ["--gpus", "--kv-store"])
def test_mxnet_device_flags_point_to_torchrun(flag, tmp_path):
    proc = run_tool("tools/train.py", "--recipe", "resnet20", flag, "0,1", "--logs-dir", tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"Error: Invalid value for '{flag}': '0,1': "
                                                         "processes and devices come from torchrun here")
