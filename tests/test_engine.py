"""Engine pieces that need no training run: LR schedule, configuration, checkpoints, signals."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import invoke_tool
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
    proc = invoke_tool(*args, *extra, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and message in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1, proc.stderr


SIGNALS = r"""
import multiprocessing, os, signal, sys, time
from toolkit.engine import signals
stop = signals.StopRequest().install()
if sys.argv[1] == "armed":
    stop.arm()
child = multiprocessing.Process(target=time.sleep, args=(60,))  # stands for a DataLoader worker
child.start()
print("child", child.pid, flush=True)
os.kill(os.getpid(), signal.SIGTERM)  # SLURM: SIGTERM to the rank and, forwarded, from torchrun
time.sleep(0.05)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.05)
print("alive", stop.requested, flush=True)
time.sleep(1.0)
os.kill(os.getpid(), signal.SIGTERM)  # a person's second Ctrl-C, as torchrun passes it on
time.sleep(2)
print("still alive", flush=True)
"""


def _gone(pid, within=2.0):
    """The process ended (gone or a zombie) within `within` seconds (SIGKILL takes a moment)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("armed", ["armed", "unarmed"])
def test_a_duplicate_signal_is_one_request_and_any_later_one_exits_at_once(armed):
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SIGNALS, armed], capture_output=True, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 130 and time.monotonic() - t < 15, proc.stdout + proc.stderr
    assert _gone(int(lines[0].split()[1])), "the child process was left behind"
    if armed == "armed":
        assert lines[1:] == ["alive True"], proc.stdout + proc.stderr
        assert "SIGTERM after a stop request: exiting now (no checkpoint)" in proc.stderr
        assert proc.stderr.count("stopping at the next step") == 1
    else:  # before the first training step nothing needs saving: the first signal exits
        assert lines[1:] == [] and "SIGTERM before the first training step" in proc.stderr


def test_checkpoint_names_take_any_number_of_batches_and_epochs(tmp_path):
    d = str(tmp_path)
    for e, b in [(3, 0), (3, 999999), (3, 1234567), (12345, 0)]:
        checkpoint.save(checkpoint.checkpoint_path(d, "r-2024", e, b), {"epoch": e})
    assert os.path.exists(tmp_path / "r-2024-0003-b1234567.pt")
    assert sorted(checkpoint.list_checkpoints(d)["r-2024"]) == [(3, 0), (3, 999999), (3, 1234567), (12345, 0)]
    os.remove(tmp_path / "r-2024-12345.pt")
    assert checkpoint.find(d, None, None).endswith("r-2024-0003-b1234567.pt")


def test_going_back_moves_the_later_checkpoints_to_an_abandoned_branch_folder(tmp_path):
    import datetime
    from toolkit.engine import branches
    d = str(tmp_path)
    for e, b in [(1, 0), (2, 0), (3, 0), (3, 7), (4, 0), (4, 123)]:
        checkpoint.save(checkpoint.checkpoint_path(d, "r", e, b), {"epoch": e, "batch": b, "lr": 0.1})
    checkpoint.save_validation(checkpoint.checkpoint_path(d, "r", 4), 3, {"accuracy": 0.5})
    when = datetime.datetime(2026, 12, 2, 22, 15, 0, tzinfo=datetime.timezone.utc)
    assert branches.start_branch(d, "r", (4, 123), when) is None  # the newest: no branch
    folder = branches.start_branch(d, "r", (2, 0), when)
    assert folder == os.path.join(d, "r.abandoned-20261202T221500Z")
    assert sorted(os.listdir(folder)) == ["r-0003-b000007.pt", "r-0003.pt", "r-0004-b000123.pt",
                                          "r-0004.pt", "r-0004.val.json"]
    assert checkpoint.find(d, None, None).endswith("r-0002.pt")  # a plain resume: this branch
    checkpoint.save(checkpoint.checkpoint_path(d, "r", 3), {"epoch": 3})  # the new branch's epoch 3
    checkpoint.prune(d, "r", 2, (3, 0))  # --keep-last 2 counts this branch only
    assert sorted(n for n in os.listdir(d) if n.endswith(".pt")) == ["r-0002.pt", "r-0003.pt"]
    assert len(os.listdir(folder)) == 5
    checkpoint.save(checkpoint.checkpoint_path(d, "r", 3, 5), {"epoch": 3, "batch": 5})
    again = branches.start_branch(d, "r", (3, 0), when)  # same second: a folder of its own
    assert again == folder + "-2" and os.listdir(again) == ["r-0003-b000005.pt"]
    listing = branches.listing(d, "r")
    assert "current branch" in listing and f"abandoned branch {folder}/" in listing
    assert "r-0004-b000123.pt" in listing and "0.5000" in listing


def test_recipe_eval_resize_and_lighting_follow_the_image_size_and_the_paper():
    assert make_config("resnet50").eval_resize == 256
    assert make_config("resnet18", image_size=64).eval_resize == 73   # 256/224 of 64
    assert make_config("resnet18", image_size=64, eval_resize=64).eval_resize == 64
    assert make_config("resnet20").eval_resize == 32                  # CIFAR: no resize-and-crop
    assert make_config("alexnet").pca_lighting == 0.1 and make_config("resnet50").pca_lighting == 0.0


class StopAtStep:  # a stop request that reads true from the step-th read on (read once per step)
    def __init__(self, step):
        self.reads, self.step = 0, step

    @property
    def requested(self):
        self.reads += 1
        return self.reads >= self.step


def stop_at_step(tmp_path, step: int) -> dict:
    """fit() of resnet20 on 5 synthetic batches an epoch, a stop requested at the step-th step."""
    import logging
    from toolkit.benchmarks.train import SyntheticLoader, make_batches
    from toolkit.engine import dist
    from toolkit.engine.trainer import Trainer
    c = make_config("resnet20", batch_size=4, epochs=3, num_classes=10, data="synthetic",
                    checkpoints_dir=str(tmp_path), prefix="s")
    env = dist.setup()
    loader = SyntheticLoader(make_batches(c, env.device), steps=5)
    return Trainer(c, env, logging.getLogger("test"), stop=StopAtStep(step), loaders=(loader, None)).fit()


def test_a_stop_asked_during_an_epochs_last_step_ends_with_that_epochs_checkpoint(tmp_path):
    result = stop_at_step(tmp_path, 5)
    assert result["stopped"] and (result["epoch"], result["batch"]) == (1, 0)
    assert sorted(os.listdir(tmp_path)) == ["s-0001.pt"]
    # a stop asked mid-epoch is seen one step later, at the same step on every rank
    other = tmp_path / "mid"
    result = stop_at_step(other, 7)
    assert (result["epoch"], result["batch"]) == (1, 3)
    assert sorted(os.listdir(other)) == ["s-0001-b000003.pt", "s-0001.pt"]


def test_a_new_run_never_overwrites_an_earlier_runs_checkpoints(tmp_path):
    ck = tmp_path / "ck"
    checkpoint.save(checkpoint.checkpoint_path(str(ck), "r", 1), {"epoch": 1})
    before = (ck / "r-0001.pt").read_bytes()
    proc = invoke_tool("tools/train.py", "--recipe", "resnet20", "--prefix", "r", "--checkpoints-dir", ck,
                    "--logs-dir", tmp_path / "logs", "--num-epochs", "3", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"Error: {ck}/ already holds checkpoints of a run named 'r': continue it with tools/resume.py "
        "--prefix r, start another with --prefix NAME, or delete them"]
    assert (ck / "r-0001.pt").read_bytes() == before and not (tmp_path / "logs").exists()
    # MXNet's flag names work too: --load-epoch (resume.py), --num-epochs (train.py, above)
    proc = invoke_tool("tools/resume.py", "--load-epoch", "7", "--checkpoints-dir", ck, check=False)
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr and "epochs saved: 1" in proc.stderr


def test_train_and_val_split_flags_choose_the_record_files(tmp_path):
    from toolkit import recordio
    data = tmp_path / "d"
    data.mkdir()
    with recordio.IndexedRecordWriter(str(data / "x_train.idx"), str(data / "x_train.rec")) as w:
        w.write_idx(0, recordio.pack((0, 0.0, 0, 0), b"\xff\xd8"))
    proc = invoke_tool("tools/train.py", "--recipe", "resnet20", "--data", data, "--train-split", "trainval",
                    "--checkpoints-dir", tmp_path / "ck", "--logs-dir", tmp_path / "logs", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].endswith(
        f"Error: {data}: no .rec files for split 'trainval' (found: x_train); "
        "a split S is S.rec, NAME_S.rec or S-00000.rec")


def test_a_val_split_the_dataset_lacks_is_one_line_and_exit_2_before_any_work(tmp_path, capsys):
    """Was a run without validation that ended with status 0."""
    from toolkit import recordio
    from toolkit.engine.config import make_config
    from toolkit.training import run
    data = tmp_path / "d"
    data.mkdir()
    for split in ("x_train", "x_val"):
        with recordio.IndexedRecordWriter(str(data / f"{split}.idx"), str(data / f"{split}.rec")) as w:
            w.write_idx(0, recordio.pack((0, 0.0, 0, 0), b"\xff\xd8"))
    cfg = make_config("resnet20", data=str(data), val_split="vall", checkpoints_dir=str(tmp_path / "ck"),
                      logs_dir=str(tmp_path / "logs"), workers=0)
    assert run(cfg) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        f"Error: --val-split vall: {data}: no .rec files for split 'vall' (found: x_train, x_val); "
        "a split S is S.rec, NAME_S.rec or S-00000.rec"), lines
    assert not os.listdir(tmp_path / "ck")
    status = json.loads((tmp_path / "logs" / "resnet20.status.json").read_text())
    assert status["status"] == "failed" and status["code"] == 2


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_earlier_ones(tmp_path, capsys,
                                                                                      monkeypatch):
    """Was a 50-line traceback (torch's writer says 'unexpected pos' as a RuntimeError)."""
    from toolkit.training import run
    from toolkit.toy import ensure_toy_dataset
    data = ensure_toy_dataset(str(tmp_path / "toy"), images_per_class=2, quiet=True)
    real, calls = torch.save, []

    def disk_full_on_the_second(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) < 2:
            return real(obj, f, *args, **kwargs)
        with open(f, "wb") as out:
            out.write(b"PK\3\4" * 100)  # what fitted
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")
    monkeypatch.setattr(torch, "save", disk_full_on_the_second)
    ck = tmp_path / "ck"
    cfg = make_config("resnet18", width=0.25, image_size=32, batch_size=8, epochs=3, data=data, workers=0,
                      checkpoints_dir=str(ck), logs_dir=str(tmp_path / "logs"), prefix="full", loader="torch")
    assert run(cfg) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "Error" in line or "Traceback" in line]
    assert errors == [errors[0]] and errors[0].endswith(
        f"Error: {ck}/full-0002.pt: the checkpoint could not be written (unexpected pos 768 vs 662); the partial "
        f"file is removed and the checkpoints already in {ck} are intact: free space there (or use "
        "--checkpoints-dir on another disk), then continue with tools/resume.py"), err
    assert sorted(os.listdir(ck)) == ["full-0001.pt", "full-0001.val.json"]
    assert checkpoint.load(str(ck / "full-0001.pt"))["epoch"] == 1


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
    proc = invoke_tool("tools/train.py", "--recipe", "resnet20", "--data", data, "--num-classes", "2",
                    "--checkpoints-dir", tmp_path / "ck", "--logs-dir", tmp_path / "logs", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].endswith(
        f"Error: --num-classes 2: {data}/classes.tsv lists 3 classes; leave the flag out to use them all")


@pytest.mark.parametrize("flag", ["--gpus", "--kv-store"])
def test_mxnet_device_flags_point_to_torchrun(flag, tmp_path):
    proc = invoke_tool("tools/train.py", "--recipe", "resnet20", flag, "0,1", "--logs-dir", tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"Error: Invalid value for '{flag}': '0,1': "
                                                         "processes and devices come from torchrun here")


class _Capture(__import__("logging").Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _trainer(tmp_path, stop=None, val=None, state=None, resumed_from=None, steps=3, epochs=1):
    import logging
    from toolkit.benchmarks.train import SyntheticLoader, make_batches
    from toolkit.engine import dist
    from toolkit.engine.trainer import Trainer
    c = make_config("resnet20", batch_size=4, epochs=epochs, num_classes=10, data="synthetic",
                    checkpoints_dir=str(tmp_path), prefix="s")
    env = dist.setup()
    log = logging.getLogger(f"test-{id(tmp_path)}")
    log.setLevel(logging.INFO)
    capture = _Capture()
    log.addHandler(capture)
    loader = SyntheticLoader(make_batches(c, env.device), steps=steps)
    return Trainer(c, env, log, state, resumed_from, stop, loaders=(loader, val)), capture


def test_weights_and_buffers_are_checked_finite_before_any_checkpoint(tmp_path):
    from toolkit.engine.bookkeeping import NonFiniteLoss
    trainer, _ = _trainer(tmp_path)
    steps = []

    def last_update_overflows(optimizer, args, kwargs):  # the loss of that step was finite
        steps.append(1)
        if len(steps) == 3:
            trainer.model.fc.weight.data[0, 0] = float("inf")
    trainer.optimizer.register_step_post_hook(last_update_overflows)
    with pytest.raises(NonFiniteLoss, match=r"weights became non-finite by Epoch\[1\] Batch \[0\] \(fc.weight\)"):
        trainer.fit()
    assert os.listdir(tmp_path) == []
    trainer, _ = _trainer(tmp_path)  # a buffer (training-mode BatchNorm never reads running_var)
    bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var[0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="running_var"):
        trainer.fit()
    assert os.listdir(tmp_path) == []


class _Flag:
    requested = False


def test_a_stop_during_validation_ends_the_pass_and_a_resume_runs_it_first(tmp_path):
    from toolkit.benchmarks.train import SyntheticLoader, make_batches
    stop = _Flag()
    seen = []

    class Val(SyntheticLoader):
        def __iter__(self):
            for i, batch in enumerate(super().__iter__()):
                seen.append(i)
                stop.requested = i >= 2  # Ctrl-C while the third validation batch is processed
                yield batch
    c = make_config("resnet20", batch_size=4, image_size=32, num_classes=10)
    val = Val(make_batches(c, torch.device("cpu")), steps=8)
    trainer, log = _trainer(tmp_path, stop=stop, val=val, epochs=2)
    result = trainer.fit()
    path = str(tmp_path / "s-0001.pt")
    assert result["stopped"] and result["path"] == path and (result["epoch"], result["batch"]) == (1, 0)
    assert len(seen) == 4  # asked at batch 2, agreed one batch later, left before the rest
    assert f"Stopped during the validation of Epoch[0]: a resume from {path} runs it again" in log.lines
    assert not any("Validation-" in line for line in log.lines)
    assert sorted(os.listdir(tmp_path)) == ["s-0001.pt"]
    state = checkpoint.load(path)
    assert state["val_epoch"] == 0 and checkpoint.pending_validation(path, state) == 0
    seen.clear()
    stop.requested = False
    Val.__iter__ = SyntheticLoader.__iter__
    trainer, log = _trainer(tmp_path, stop=None, val=val, state=state, resumed_from=path, epochs=2)
    trainer.fit()
    first = [line for line in log.lines if "Validation-accuracy" in line]
    assert first[0].startswith("Epoch[0] Validation-accuracy=") and len(first) == 2
    assert log.lines.index(first[0]) < min(i for i, line in enumerate(log.lines) if line.startswith("Epoch[1] Batch"))
    assert checkpoint.load_validation(path)["epoch"] == 0
    assert sorted(os.listdir(tmp_path)) == ["s-0001.pt", "s-0001.val.json", "s-0002.pt", "s-0002.val.json"]


def test_the_printed_resume_command_gives_torchrun_the_processes_per_node(monkeypatch):
    from toolkit.engine.dist import DistEnv
    from toolkit.engine.run import resume_command
    c = make_config("resnet50", prefix="r50")
    env = DistEnv(rank=0, local_rank=0, world=32, device=torch.device("cpu"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "4")
    command = resume_command(c, env)
    assert command.startswith("torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d ")
    assert "tools/resume.py --prefix r50" in command and "on each of the 4 nodes" in command
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")
    assert resume_command(c, DistEnv(0, 0, 2, torch.device("cpu"))) == \
        "torchrun --nproc_per_node=2 tools/resume.py --prefix r50"
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.delenv("GROUP_WORLD_SIZE")
    assert resume_command(c, DistEnv(0, 0, 1, torch.device("cpu"))) == "tools/resume.py --prefix r50"


def test_a_checkpoints_folder_named_with_glob_characters_is_read_as_named(tmp_path):
    """`--checkpoints-dir runs/[2024]`: the folder's name is a name, not a pattern (else its run is
    not found, and a fresh run with the same prefix overwrites it)."""
    from toolkit.engine import branches
    d = str(tmp_path / "ck[2024]*")
    for e, b in [(1, 0), (2, 0), (2, 5)]:
        checkpoint.save(checkpoint.checkpoint_path(d, "r", e, b), {"epoch": e, "batch": b})
    assert sorted(checkpoint.list_checkpoints(d)["r"]) == [(1, 0), (2, 0), (2, 5)]
    assert checkpoint.find(d, None, None).endswith("r-0002-b000005.pt")
    folder = branches.start_branch(d, "r", (1, 0))
    assert branches.branch_folders(d, "r") == [folder] and "r-0002-b000005.pt" in branches.listing(d, "r")


def test_the_printed_resume_command_can_be_pasted_into_a_shell(monkeypatch):
    import shlex
    from toolkit.engine.dist import DistEnv
    from toolkit.engine.run import resume_command
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("GROUP_WORLD_SIZE", raising=False)
    c = make_config("resnet50", prefix="r50 (lr 0.1)", checkpoints_dir="/scratch/my runs/ck")
    words = shlex.split(resume_command(c, DistEnv(0, 0, 1, torch.device("cpu"))))
    assert words == ["tools/resume.py", "--prefix", "r50 (lr 0.1)", "--checkpoints-dir", "/scratch/my runs/ck"]


def test_stops_of_one_epoch_at_two_global_batch_sizes_are_ordered_by_where_they_stand(tmp_path):
    """A resume on more GPUs (or a larger --batch-size) numbers its batches in larger units: a stop
    at 550 of 625 batches is later than the one it resumed from at 1000 of 1250. A plain resume
    takes the later one, and resuming from it starts no branch."""
    from toolkit.engine import branches
    d = str(tmp_path)
    checkpoint.save(checkpoint.checkpoint_path(d, "r", 3), {"epoch": 3, "batch": 0, "position": 3.0})
    checkpoint.save(checkpoint.checkpoint_path(d, "r", 3, 1000), {"epoch": 3, "batch": 1000, "position": 3.8})
    checkpoint.save(checkpoint.checkpoint_path(d, "r", 3, 550), {"epoch": 3, "batch": 550, "position": 3.88})
    assert checkpoint.find(d, None, None).endswith("r-0003-b000550.pt")
    assert branches.start_branch(d, "r", (3, 550)) is None
    rows = branches.table(d, "r")
    assert [r["batch"] for r in rows] == [0, 1000, 550]
    folder = branches.start_branch(d, "r", (3, 1000))  # going back to the earlier stop: a branch
    assert os.listdir(folder) == ["r-0003-b000550.pt"]


def test_a_stop_signal_during_the_move_to_a_branch_waits_until_every_file_moved(tmp_path, monkeypatch):
    """A resume's first Ctrl-C exits at once (nothing trained yet): arriving while the later
    checkpoints move, it must not leave half of them behind, where a plain resume would pick them."""
    from toolkit.engine import branches

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    d = str(tmp_path)
    for e, b in [(1, 0), (2, 0), (3, 0), (3, 4)]:
        checkpoint.save(checkpoint.checkpoint_path(d, "r", e, b), {"epoch": e, "batch": b})
    replace = os.replace

    def replace_and_signal(src, dst):
        os.kill(os.getpid(), signal.SIGINT)
        replace(src, dst)
    previous = signal.signal(signal.SIGINT, handler)
    monkeypatch.setattr(os, "replace", replace_and_signal)
    try:
        with pytest.raises(Interrupted):
            branches.start_branch(d, "r", (1, 0))
    finally:
        signal.signal(signal.SIGINT, previous)
        monkeypatch.undo()
    assert sorted(n for n in os.listdir(d) if n.endswith(".pt")) == ["r-0001.pt"]


def test_a_stop_seen_at_an_epochs_last_step_ends_with_that_epochs_checkpoint_not_a_stop_at_its_end(tmp_path):
    """Asked during the next-to-last step, the stop is seen (one step late) at the last one: the
    epoch is done, so its checkpoint is PREFIX-0001.pt (validation skipped), not PREFIX-0000-b000005.pt."""
    result = stop_at_step(tmp_path, 4)
    assert result["stopped"] and (result["epoch"], result["batch"]) == (1, 0)
    assert sorted(os.listdir(tmp_path)) == ["s-0001.pt"]
