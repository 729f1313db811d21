"""toolkit.sweep and tools/sweep.py: grid and variant checks through tools/train.py's own command,
run names, the sbatch file submitit writes, and end to end on the toy set: a 2 x 2 sweep stopped by
Ctrl-C and started again, and the SLURM path through submitit's local executor with a requeue."""
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import REPO
from toolkit import journal
from toolkit.sweep import Run, SweepJob, load_command, parse_grid, plan, submit
from toolkit.toy import ensure_toy_dataset

SWEEP = REPO / "tools" / "sweep.py"
TOOLS = str(REPO / "tools")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
TINY = ["--recipe", "resnet18", "--width", "0.25", "--image-size", "32", "--batch-size", "16", "--workers", "0",
        "--log-every", "1"]


@pytest.fixture(scope="module")
def train_command():
    return load_command(str(REPO / "tools" / "train.py"))


@pytest.fixture(scope="module")
def sweep_main():
    return load_command(str(SWEEP))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """10 classes x 8 images: 60 train (4 batches of 16), 20 val."""
    return ensure_toy_dataset(str(tmp_path_factory.mktemp("toy")), images_per_class=8, quiet=True)


@pytest.mark.parametrize("args, message", [
    (["--grid", "colour=red,blue"], "--grid colour=red,blue: tools/train.py has no flag --colour"),
    (["--grid", "act=relu,swish"], "--grid act=relu,swish: Invalid value for '--act': 'swish' is not one of"),
    (["--grid", "lr=0.1,-1"], "--grid lr=0.1,-1: Invalid value for '--lr': -1.0 is not in the range x>0"),
    (["--grid", "epochs=two"], "--grid epochs=two: Invalid value for '--epochs' / '--num-epochs': 'two' is not a valid integer"),
    (["--grid", "act"], "--grid act: expected FLAG=VALUE,VALUE,..."),
    (["--grid", "act=relu,"], "--grid act=relu,: expected FLAG=VALUE,VALUE,..."),
    (["--grid", "nesterov=true,maybe"], "--grid nesterov=true,maybe: --nesterov is a switch: give true or false"),
    (["--grid", "prefix=a,b"], "--grid prefix=a,b: the sweep names each run"),
    (["--grid", "act=relu,elu", "--act", "elu"], "--grid act=relu,elu: --act is also given to every run"),
    (["--grid", "lr-schedule=cosine,step", "--lr-step-epochs", "0"],
     "--grid lr-schedule=cosine,step: --lr-schedule step needs --lr-step-epochs with the period"),
    (["--grid", "act=relu", "--colour", "red"], "the flags given to every run: No such option '--colour'"),
    (["--grid", "recipe=resnet18,resnet99"], "--grid recipe=resnet18,resnet99: unknown recipe 'resnet99'"),
    ([], "nothing to sweep: give --grid FLAG=V1,V2"),
    (["--grid", "act=relu", "--slurm-param", "account"], "--slurm-param account: expected KEY=VALUE"),
    # one flag on two axes (or under its alias) was one run with the last value only
    (["--grid", "lr=0.1", "--grid", "lr=0.2"], "--grid lr=0.2: --lr is already an axis (--grid lr=0.1)"),
    (["--grid", "epochs=1", "--grid", "num-epochs=2"], "--grid num-epochs=2: --epochs is already an axis"),
    # the negative form of a switch was read as the positive one
    (["--grid", "no-nesterov=true,false"], "--grid no-nesterov=true,false: name the switch as nesterov=true/false"),
])
def test_bad_specs_are_one_line_before_anything_runs(sweep_main, tmp_path, args, message):
    common = ["--logs-dir", str(tmp_path / "logs"), "--checkpoints-dir", str(tmp_path / "ck")]
    recipe = [] if any(a.startswith("recipe=") for a in args) else ["--recipe", "resnet18"]
    result = CliRunner().invoke(sweep_main, args + recipe + common)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: " + message) and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == "" and not (tmp_path / "logs").exists() and not (tmp_path / "ck").exists()


def test_slurm_without_slurm_or_submitit_is_one_line_before_anything_runs(sweep_main, tmp_path, monkeypatch):
    """Was submitit's RuntimeError traceback ('Could not detect "srun"') after the plan was printed."""
    import toolkit.sweep
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    common = ["--recipe", "resnet18", "--logs-dir", str(tmp_path / "logs"), "--checkpoints-dir", str(tmp_path / "ck")]
    result = CliRunner().invoke(sweep_main, ["--slurm", "--grid", "lr=0.1,0.2"] + common)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: --slurm: sbatch and srun not found on the PATH") \
        and result.stderr.count("\n") == 1 and result.stdout == "", result.output
    monkeypatch.setattr(toolkit.sweep, "submitit", None)  # not installed
    result = CliRunner().invoke(sweep_main, ["--slurm", "--slurm-cluster", "local", "--grid", "lr=0.1"] + common)
    assert result.exit_code == 2 and result.stderr.startswith("Error: --slurm: the submitit package is not "
                                                              "installed") and result.stderr.count("\n") == 1
    assert not (tmp_path / "logs").exists() and not (tmp_path / "ck").exists()


def test_bad_variants_files(sweep_main, tmp_path):
    (tmp_path / "v.yaml").write_text("- {act: relu}\n- {act: elu, init: nope}\n")
    (tmp_path / "same.json").write_text(json.dumps([{"act": "relu", "name": "x"}, {"act": "elu", "name": "x"}]))
    (tmp_path / "broken.yaml").write_text("- act: [relu\n")
    (tmp_path / "empty.yaml").write_text("act: []\n")  # was an IndexError traceback
    (tmp_path / "twice.yaml").write_text("act: [relu, elu]\nact: [prelu]\n")  # was the last one only
    (tmp_path / "twice.json").write_text('{"act": ["relu"], "act": ["elu"]}')
    (tmp_path / "both.yaml").write_text("- {act: relu}\n")
    for name, message in [("empty.yaml", "act: no values"), ("twice.yaml", "'act' is given twice"),
                          ("twice.json", "'act' is given twice"), ("v.yaml", "run resnet18_act-elu_init-nope (variant 2): Invalid value for '--init'"),
                          ("same.json", "would both be named 'resnet18_x'; give the variants a name"),
                          ("broken.yaml", "--variants "), ("missing.yaml", "cannot read it")]:
        result = CliRunner().invoke(sweep_main, ["--variants", str(tmp_path / name), "--recipe", "resnet18"])
        assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    result = CliRunner().invoke(sweep_main, ["--variants", str(tmp_path / "both.yaml"), "--grid", "act=elu",
                                             "--recipe", "resnet18"])
    assert result.exit_code == 2 and "variant 1: --act is already an axis" in result.stderr, result.stderr


def test_runs_names_and_arguments(train_command, tmp_path):
    runs = plan(train_command, ["--recipe", "resnet18", "--epochs", "2"],
                parse_grid(["act=relu,prelu", "init=he_normal,xavier_uniform", "nesterov=true,false"]), [])
    assert [r.prefix for r in runs][:3] == ["resnet18_act-relu_init-he_normal_nesterov-true",
                                            "resnet18_act-relu_init-he_normal_nesterov-false",
                                            "resnet18_act-relu_init-xavier_uniform_nesterov-true"]
    assert len(runs) == 8 and len({r.prefix for r in runs}) == 8
    assert runs[1].argv == ["--recipe", "resnet18", "--epochs", "2", "--act", "relu", "--init", "he_normal",
                            "--no-nesterov", "--prefix", "resnet18_act-relu_init-he_normal_nesterov-false"]
    # a YAML list of variants crossed with a grid; a --prefix given to every run is the base name
    (tmp_path / "v.yaml").write_text("- {name: baseline}\n- {bn: after}\n- {act: elu, lr-step-epochs: [20, 40]}\n")
    from toolkit.sweep import load_variants
    variants, grid = load_variants(str(tmp_path / "v.yaml"))
    runs = plan(train_command, ["--recipe", "resnet18", "--prefix", "cats"], parse_grid(["lr=0.1,0.01"]), variants)
    assert [r.prefix for r in runs] == ["cats_baseline_lr-0.1", "cats_baseline_lr-0.01", "cats_bn-after_lr-0.1",
                                        "cats_bn-after_lr-0.01", "cats_act-elu_lr-step-epochs-20_40_lr-0.1",
                                        "cats_act-elu_lr-step-epochs-20_40_lr-0.01"]
    assert runs[4].argv[-6:] == ["--lr-step-epochs", "20,40", "--lr", "0.1", "--prefix", runs[4].prefix]
    (tmp_path / "g.json").write_text(json.dumps({"recipe": ["resnet18", "vgg11"], "dropout": 0.5}))
    variants, grid = load_variants(str(tmp_path / "g.json"))
    assert [r.prefix for r in plan(train_command, [], grid, variants)] == \
        ["sweep_recipe-resnet18_dropout-0.5", "sweep_recipe-vgg11_dropout-0.5"]


def test_sbatch_file_of_the_array(sweep_main, tmp_path, monkeypatch):
    """The real submitit writes the sbatch file and calls `sbatch` (a stand-in here that keeps the file)."""
    from submitit.core.job_environment import JobEnvironment
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/job.sh\necho Submitted batch job 4242\n")
    for f in ("srun", "sbatch"):
        (bin_dir / f).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    monkeypatch.setattr(JobEnvironment, "USR_SIG", "USR2")
    result = CliRunner().invoke(sweep_main, [
        "--slurm", "--nproc-per-node", "8", "--slurm-max-parallel", "2", "--slurm-partition", "gpu",
        "--slurm-time", "600", "--slurm-param", "account=proj", "--grid", "act=relu,elu", "--grid", "lr=0.1,0.2",
        "--recipe", "resnet18", "--logs-dir", str(tmp_path / "logs"), "--checkpoints-dir", str(tmp_path / "ck")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "job.sh").read_text()
    for line in ("--array=0-3%2", "--signal=TERM@90", "--gpus-per-node=8", "--ntasks-per-node=1", "--nodes=1",
                 "--time=600", "--partition=gpu", "--account=proj"):
        assert f"#SBATCH {line}\n" in text, text
    assert os.environ["SUBMITIT_PREEMPT_SIGNAL"] == "TERM"  # the jobs inherit it: submitit's handler on SIGTERM
    assert "submitted 4 runs as jobs 4242_0 .. 4242_3" in result.stderr and "4 of 4 runs not started yet" in result.stdout


def test_job_pickles_without_its_process_and_checkpoints_as_itself():
    job = SweepJob(Run("p", {"act": "elu"}, ["--act", "elu"]), 2, TOOLS, "logs", "ck", "/somewhere")
    job._proc = subprocess.Popen([sys.executable, "-c", "pass"])
    job._proc.wait()
    again = pickle.loads(pickle.dumps(job))
    assert again._proc is None and again.args == job.args
    delayed = job.checkpoint()
    assert isinstance(delayed.function, SweepJob) and delayed.function.args == job.args and not delayed.args


def _sweep(args, **kw):
    return subprocess.Popen([sys.executable, str(SWEEP), *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(path, pattern, proc, timeout=180):
    deadline = time.time() + timeout
    while not (os.path.exists(path) and re.search(pattern, open(path).read())):
        assert proc.poll() is None and time.time() < deadline, (proc.poll(), path)
        time.sleep(0.05)


def _last_validation(log):
    text = open(log).read()
    return {k: [float(v) for v in re.findall(rf"Validation-{k}=([\d.]+)", text)]
            for k in ("accuracy", "top_k_accuracy_5", "cross-entropy")}


@pytest.mark.slow
def test_sweep_stopped_by_ctrl_c_then_resumed_then_nothing_new(data, tmp_path):
    logs, ck = tmp_path / "logs", tmp_path / "ck"
    args = ["--grid", "act=relu,elu", "--grid", "init=he_normal,xavier_uniform", *TINY, "--epochs", "2",
            "--data", data, "--logs-dir", str(logs), "--checkpoints-dir", str(ck)]
    names = ["resnet18_act-relu_init-he_normal", "resnet18_act-relu_init-xavier_uniform",
             "resnet18_act-elu_init-he_normal", "resnet18_act-elu_init-xavier_uniform"]
    # Ctrl-C (SIGINT to the whole process group, as a terminal does) during the second run
    proc = _sweep(args, start_new_session=True)
    _wait_for(logs / f"{names[1]}.log", r"Epoch\[0\] Batch \[1-2\]", proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    df = journal.journal(str(logs), str(ck)).set_index("prefix")
    assert list(df.index) == sorted(names[:2]) and df.loc[names[0], "status"] == "finished"
    assert df.loc[names[1], "status"] == "stopped" and f"tools/resume.py --prefix {names[1]}" in df.loc[names[1], "detail"]
    assert f"{names[1]} (stopped): tools/resume.py --prefix {names[1]}" in out
    stops = list(ck.glob(f"{names[1]}-000?-b*.pt")) + list(ck.glob(f"{names[1]}-0001.pt"))
    assert stops and not list(ck.glob(f"{names[2]}*"))
    # started again: the stopped run resumes from its checkpoint, the others run
    proc = _sweep(args)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    assert f"[1/4] {names[0]}: skip (finished)" in err and f"[2/4] {names[1]}: resume" in err
    assert "Resumed training from" in (logs / f"{names[1]}.log").read_text()
    df = journal.journal(str(logs), str(ck)).set_index("prefix")
    assert sorted(df.index) == sorted(names) and (df["status"] == "finished").all()
    for name in names:  # the journal's figures are the logs' validation lines
        val = _last_validation(logs / f"{name}.log")
        best = val["accuracy"].index(max(val["accuracy"]))
        row = df.loc[name]
        assert len(val["accuracy"]) == 2 and (row["epochs_done"], row["epochs_planned"]) == (2, 2)
        assert row["best_val_top1"] == max(val["accuracy"]) and row["best_epoch"] == best + 1
        assert row["best_val_top5"] == val["top_k_accuracy_5"][best]
        assert row["last_val_loss"] == val["cross-entropy"][-1]
        assert torch.load(ck / f"{name}-0002.pt", weights_only=True)["config"]["act"] == name.split("_")[1][4:]
    for name in names:
        assert f"| {name} | resnet18 | " in journal.markdown(journal.display(df.reset_index()))
    assert journal.flags_from_defaults(json.loads(df.loc[names[2], "config"])).startswith("--act elu ")
    # and again: nothing new runs
    before = {p: p.stat().st_mtime_ns for p in list(ck.iterdir()) + list(logs.iterdir())}
    proc = _sweep(args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err.count("skip (finished)") == 4 and "torch.distributed.run" not in err
    assert {p: p.stat().st_mtime_ns for p in list(ck.iterdir()) + list(logs.iterdir())} == before
    assert all(name in out for name in names)


@pytest.mark.slow
def test_slurm_array_through_submitit_local_requeues_on_sigterm(train_command, data, tmp_path):
    logs, ck = tmp_path / "logs", tmp_path / "ck"
    common = [*TINY, "--epochs", "1", "--data", data, "--logs-dir", str(logs), "--checkpoints-dir", str(ck)]
    runs = plan(train_command, common, parse_grid(["act=relu,elu"]), [])
    os.environ["OMP_NUM_THREADS"] = "1"
    jobs, todo = submit(runs, 1, TOOLS, str(logs), str(ck), str(tmp_path / "submitit"), "local", time_min=10)
    assert [r.prefix for r in todo] == ["resnet18_act-relu", "resnet18_act-elu"] and len(jobs) == 2
    _wait_for(logs / "resnet18_act-elu.log", r"Epoch\[0\] Batch \[1-2\]", jobs[1]._process)
    jobs[1]._process.send_signal(signal.SIGTERM)  # the local controller passes it to the job, as SLURM would
    results = [job.result() for job in jobs]
    assert [r["status"] for r in results] == ["finished", "finished"]
    stdout = jobs[1].stdout()
    assert "Caught signal SIGTERM" in stdout and "Requeued job" in stdout, stdout
    assert re.search(r"resnet18_act-elu: resume\n.*tools/resume.py --prefix resnet18_act-elu", stdout)
    log = (logs / "resnet18_act-elu.log").read_text()
    # mid-epoch a stop checkpoint; at the epoch's last step (a loaded machine) the epoch's own
    stop = re.search(r'Stopped (?:at Epoch\[0\] Batch \[\d+\]: Saved checkpoint to "(.*?)"|after Epoch\[0\]: (\S+))', log)
    assert stop, log
    assert re.search(f'Resumed training from "{re.escape(stop[1] or stop[2])}"', log), log
    assert "Requeued" not in jobs[0].stdout()
    df = journal.journal(str(logs), str(ck))
    assert (df["status"] == "finished").all() and (df["epochs_done"] == 1).all()
