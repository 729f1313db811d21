"""A run's identity (issue 22, items 4 and 8): a copied checkpoint continues as its own run; a sweep
refuses a run whose flags changed; a status without a heartbeat is lost, not running; a resume's
branch starts at its first training step. In this process, on a tiny toy set."""
import dataclasses
import json
import os
import shutil
import socket
import time

import pytest
from click.testing import CliRunner

from tests.conftest import REPO
from toolkit import journal, sweep
from toolkit.engine import checkpoint
from toolkit.engine.config import make_config
from toolkit.training import resume, run
from toolkit.toy import ensure_toy_dataset

TINY = dict(image_size=32, batch_size=16, workers=0, log_every=100, lr=0.05, lr_schedule="constant")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """10 classes x 4 images: 32 train (2 steps of 16), 8 val."""
    return ensure_toy_dataset(str(tmp_path_factory.mktemp("toy")), images_per_class=4, quiet=True)


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)


def train(data, root, prefix, epochs, **kw):
    cfg = make_config("resnet20", prefix=prefix, epochs=epochs, data=data, checkpoints_dir=str(root / "ck"),
                      logs_dir=str(root / "logs"), **TINY, **kw)
    assert run(cfg) == 0


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_copied_checkpoint_continues_as_its_own_run(data, tmp_path):
    """MXNet's habit: copy orig-0001 to fork-0001 and resume the fork with another LR."""
    train(data, tmp_path, "orig", 2)
    ck = tmp_path / "ck"
    shutil.copy(ck / "orig-0001.pt", ck / "fork-0001.pt")
    before = snapshot(tmp_path)
    assert resume(str(ck), "fork", None, 0.01, logs_dir=str(tmp_path / "logs")) == 0
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # the original run: untouched
    # (the copy came without its .val.json: the fork validates epoch 1 first)
    assert sorted(set(after) - set(before)) == ["ck/fork-0001.val.json", "ck/fork-0002.pt", "ck/fork-0002.val.json",
                                                "logs/fork.log", "logs/fork.status.json"]
    state = checkpoint.load(str(ck / "fork-0002.pt"))
    assert state["config"]["prefix"] == "fork" and state["lr"] == 0.01
    assert json.loads((tmp_path / "logs" / "fork.status.json").read_text())["status"] == "finished"


def test_a_resume_moves_the_later_checkpoints_only_at_its_first_training_step(data, tmp_path, monkeypatch):
    train(data, tmp_path, "r", 3)
    ck = tmp_path / "ck"
    later = ["r-0002.pt", "r-0002.val.json", "r-0003.pt", "r-0003.val.json"]
    from toolkit.engine.trainer import Trainer

    def fails_before_its_first_step(self, *args):
        raise checkpoint.UserError("the first batch could not be read")
    real_step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", fails_before_its_first_step)
    assert resume(str(ck), "r", 1, 0.01) == 2
    assert all((ck / name).exists() for name in later) and not list(ck.glob("r.abandoned-*"))
    # nor does its log say it resumed: the journal and the plots still read epochs 1 and 2 as current
    log = str(tmp_path / "logs" / "r.log")
    from toolkit.logparse import parse_logs
    assert "Resumed training from" not in open(log).read()
    assert list(parse_logs([log]).epochs.index) == [0, 1, 2]
    # and the run's configuration is still the one its checkpoints continue, not the failed launch's
    row = journal.journal_row("r", str(tmp_path / "logs"), str(ck))
    assert json.loads(row["config"])["lr"] == 0.05 and row["status"] == "failed"
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert resume(str(ck), "r", 1, 0.01, epochs=2) == 0
    folder, = ck.glob("r.abandoned-*")
    assert sorted(os.listdir(folder)) == later
    text = (tmp_path / "logs" / "r.log").read_text().split("Resumed training from")[-1]
    assert text.index("New branch at Epoch[1] Batch [0]") < text.index("Epoch[1] Train-accuracy")


def test_a_running_launch_refreshes_its_heartbeat(tmp_path):
    from toolkit.engine import status
    logs = str(tmp_path / "logs")
    path = status.status_path(logs, "h")
    with status.heartbeat(logs, "h", every=0.05):
        first = json.loads(open(path).read())
        time.sleep(0.3)
        again = json.loads(open(path).read())
    assert first["status"] == again["status"] == "running" and again["heartbeat"] > first["heartbeat"]
    assert again["started"] == first["started"] and again["pid"] == os.getpid()
    ended = open(path).read()
    time.sleep(0.3)
    assert open(path).read() == ended  # the beats stop with the block (the caller writes how it ended)


def test_a_status_without_a_fresh_heartbeat_is_lost_and_the_sweep_resumes_it(data, tmp_path, monkeypatch):
    train(data, tmp_path, "h", 1)
    logs, ck = str(tmp_path / "logs"), str(tmp_path / "ck")
    with open(os.path.join(logs, "h.log"), "a") as f:  # a second launch, killed before it could say so
        f.write("2026-01-01 00:00:00,000 cnn-toolkit 0.1.0, torch 2\n")
    path = os.path.join(logs, "h.status.json")
    run_ = sweep.Run("h", {}, [])
    beat = time.time()

    def on_another_host(seconds_ago, job=None):
        with open(path, "w") as f:
            json.dump({"status": "running", "pid": 1, "host": "node-17", "job": job, "time": beat - 3600,
                       "heartbeat": beat - seconds_ago}, f)
    on_another_host(10)
    row = journal.journal_row("h", logs, ck)
    assert (row["status"], row["detail"]) == ("running", "pid 1 on node-17")
    assert sweep.next_step(run_, 1, "tools", logs, ck)[0] == "skip"
    on_another_host(86400)  # killed with its node a day ago: the status stays "running"
    row = journal.journal_row("h", logs, ck)
    assert row["status"] == "lost" and "pid 1 on node-17: no heartbeat for" in row["detail"]
    assert "tools/resume.py --prefix h" in row["detail"]
    what, cmd, _ = sweep.next_step(run_, 1, "tools", logs, ck)
    assert what == "resume" and "resume.py" in " ".join(cmd)
    # a SLURM job requeued onto another node right after a hard kill: its own earlier life
    on_another_host(5, job="4242_1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242_1")
    assert sweep.next_step(run_, 1, "tools", logs, ck)[0] == "resume"
    monkeypatch.setenv("SLURM_JOB_ID", "4242_2")
    assert sweep.next_step(run_, 1, "tools", logs, ck)[0] == "skip"
    # on this host a pid that is gone says so at once
    with open(path, "w") as f:
        json.dump({"status": "running", "pid": 2 ** 22 + 17, "host": socket.gethostname(), "heartbeat": beat}, f)
    assert journal.journal_row("h", logs, ck)["status"] == "stopped"


@pytest.fixture(scope="module")
def sweep_main():
    return sweep.load_command(str(REPO / "tools" / "sweep.py"))


def test_a_sweep_refuses_a_run_whose_flags_changed_since(sweep_main, data, tmp_path):
    logs, ck = tmp_path / "logs", tmp_path / "ck"
    common = ["--recipe", "resnet20", "--image-size", "32", "--batch-size", "16", "--workers", "0",
              "--data", data, "--logs-dir", str(logs), "--checkpoints-dir", str(ck)]
    train_cmd = sweep.load_command(str(REPO / "tools" / "train.py"))
    done, = sweep.plan(train_cmd, common + ["--epochs", "2"], sweep.parse_grid(["lr=0.05"]), [])
    params = dict(train_cmd.make_context("tools/train.py", list(done.argv)).params)
    state = {"config": dataclasses.asdict(make_config(params.pop("recipe"), **params)), "epoch": 2, "batch": 0,
             "position": 2.0}
    checkpoint.save(checkpoint.checkpoint_path(str(ck), done.prefix, 2), state)  # a finished run
    logs.mkdir()
    (logs / f"{done.prefix}.status.json").write_text(json.dumps({"status": "finished", "code": 0}))

    def sweep_again(*flags):
        return CliRunner().invoke(sweep_main, ["--dry-run", "--grid", "lr=0.05", *common, *flags])
    same = sweep_again("--epochs", "2", "--workers", "0", "--log-every", "5")  # not the experiment's
    assert same.exit_code == 0 and f"{done.prefix}: skip (finished)" in same.stderr, same.output
    for flags, message in [
        (["--epochs", "3"], f"run {done.prefix} exists with --epochs 2, this sweep gives it --epochs 3: another "
                            "experiment needs another name (--prefix BASE); continue it with tools/resume.py "
                            f"--prefix {done.prefix} --epochs 3, or delete its log and checkpoints"),
        (["--epochs", "2", "--momentum", "0.8"], "exists with --momentum 0.9, this sweep gives it --momentum 0.8"),
        (["--epochs", "2", "--data", str(tmp_path)], f"exists with --data {data}, this sweep gives it --data {tmp_path}"),
    ]:
        result = sweep_again(*flags)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr


def test_a_signal_during_the_branch_move_is_a_stop_after_the_first_step(tmp_path, monkeypatch):
    """Before the first step a Ctrl-C exits at once (nothing trained); one held back while the later
    checkpoints move is delivered after the move: by then the run has moved, so it is a stop with
    a checkpoint, not an exit that leaves a branch without a step."""
    import logging
    import signal
    from toolkit.atomic import signals_held
    from toolkit.benchmarks.train import SyntheticLoader, make_batches
    from toolkit.engine import dist, signals
    from toolkit.engine.trainer import Trainer
    monkeypatch.setattr(signals, "exit_now", lambda message, status=130: pytest.fail(f"exited: {message}"))
    c = make_config("resnet20", batch_size=4, epochs=1, num_classes=10, data="synthetic",
                    checkpoints_dir=str(tmp_path), prefix="s")
    env = dist.setup()
    stop = signals.StopRequest().install()
    try:
        trainer = Trainer(c, env, logging.getLogger("t"), stop=stop,
                          loaders=(SyntheticLoader(make_batches(c, env.device), steps=5), None))

        def move():
            with signals_held():
                os.kill(os.getpid(), signal.SIGINT)
        trainer.before_first_step = move
        result = trainer.fit()
    finally:
        stop.uninstall()
    assert result["stopped"] and (result["epoch"], result["batch"]) == (0, 2)  # seen one step late
    assert os.listdir(tmp_path) == ["s-0000-b000002.pt"]


def test_the_journal_and_the_sweep_see_every_checkpoint_the_engine_names(tmp_path):
    """A stop after batch 999,999 (ImageNet at a small batch) is PREFIX-0003-b1234567.pt: the journal's
    own lister missed it, and the sweep then started the run afresh (refused: checkpoints exist)."""
    ck = str(tmp_path / "ck")
    for epoch, batch in [(3, 1234567), (10000, 0)]:
        checkpoint.save(checkpoint.checkpoint_path(ck, "big", epoch, batch), {"epoch": epoch, "batch": batch})
    assert journal.checkpoints(ck, "big") == checkpoint.list_checkpoints(ck, "big")
    assert sorted(journal.checkpoints(ck)["big"]) == [(3, 1234567), (10000, 0)]
