"""toolkit.journal and tools/runs.py on written logs (no training): MXNet's logs of every era, our
logs' end lines and status file, flags against the recipe's defaults, tools/evaluate.py's CSVs."""
import json
import os
import re
import shutil
import socket
import time

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import precision_recall_fscore_support

from tests.conftest import REPO
from tests.helpers import run_tool
from tests.test_logparse import _mx_epoch, _write
from toolkit import journal, mxlog
from toolkit.engine.evaluation import per_class_table, write_csv
from toolkit.errors import UserError
from toolkit.sweep import load_command

RUNS = REPO / "tools" / "runs.py"
OLD = time.time() - 3600  # a log last written an hour ago: not running


def _age(*paths):
    for p in paths:
        os.utime(p, (OLD, OLD))


def _val(text, name="accuracy"):
    return [float(v) for v in re.findall(rf"Epoch\[\d+\] Validation-{name}=([\d.]+)", text)]


def test_mxnet191_logs_of_both_apis(mxnet191, tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(mxnet191 / "logs", logs)
    (tmp_path / "ck").mkdir(exist_ok=True)  # the pre-flight check may have made it
    for name in ["module-symbol.json"] + [f"module-{e:04d}.params" for e in range(1, 5)]:
        (tmp_path / "ck" / name).write_bytes(b"")  # MXNet's checkpoint names (the files are not read)
    _age(*logs.iterdir())
    df = journal.journal(str(logs), str(tmp_path / "ck")).set_index("prefix")
    # logs named NAME.log, MXNet's checkpoints module-NNNN.params: one row each
    assert set(df.index) == {"module_training_0", "module_training_2", "feedforward_training_0",
                             "feedforward_training_2", "module"}
    for name in ("module_training_0", "module_training_2", "feedforward_training_0", "feedforward_training_2"):
        text = (logs / f"{name}.log").read_text()
        row = df.loc[name]
        assert row["best_val_top1"] == max(_val(text)) and row["best_val_top1"] > 0
        best = _val(text).index(max(_val(text)))
        assert row["best_val_top5"] == _val(text, "top_k_accuracy_5")[best]
        assert row["last_val_loss"] == _val(text, "cross-entropy")[-1]
        assert row["epochs_done"] == int(re.findall(r"Epoch\[(\d+)\] Time cost", text)[-1]) + 1
        speeds = [float(s) for s in re.findall(r"Speed: ([\d.]+)", text)]
        assert row["images_per_sec"] == pytest.approx(np.mean(speeds), rel=0.2)
        assert row["wall_s"] == pytest.approx(sum(float(t) for t in re.findall(r"Time cost=([\d.]+)", text)))
        assert row["status"] == "stopped" and row["recipe"] == ""  # no end line, no configuration
    assert df.loc["module_training_2", "best_epoch"] == 3  # Epoch[2]'s figures: 3 epochs trained
    assert df.loc["module", "epochs_done"] == 4 and df.loc["module", "log"] == ""


@pytest.mark.parametrize("shape", ["old", "single", "range"])
def test_every_speedometer_era(tmp_path, shape):
    accs = [0.3, 0.5, 0.4]
    lines = [x for e, a in enumerate(accs) for x in _mx_epoch(e, a, shape=shape, train=shape != "old")]
    log = _write(tmp_path / "old.log", lines)
    _age(log)
    row = journal.journal(str(tmp_path), str(tmp_path / "none")).iloc[0]
    assert row["prefix"] == "old" and row["best_val_top1"] == pytest.approx(0.6) and row["best_epoch"] == 2
    assert row["epochs_done"] == 3 and row["last_val_loss"] == pytest.approx(1.9 - 0.4)
    assert row["images_per_sec"] == 1075
    if shape == "old":  # MXNet <= 0.9 logged no loss with training (the FeedForward API: no Train- lines)
        assert np.isnan(row["last_train_loss"])
    else:
        assert row["last_train_loss"] == pytest.approx(2 - 0.4)


def _ours(tmp_path, prefix, tail, epochs=2, config=None):
    """A log of ours: header, two epochs, then `tail` lines (an end line)."""
    ts = "2026-11-23 12:00:%02d,000 "
    cfg = {"recipe": "resnet18", "epochs": epochs, "width": 0.25, "act": "elu", "lr": 0.1, "prefix": prefix,
           "batch_size": 32, "image_size": 224, "eval_resize": 256, "nesterov": True, **(config or {})}
    lines = [ts % 0 + "cnn-toolkit 0.1.0, torch 2.4", ts % 0 + "world size 2, device cpu (cpu), loader torch, model x",
             ts % 0 + "config " + json.dumps(cfg)]
    for e in range(2):
        lines += [ts % (10 + e) + x for x in mxlog.validation_lines(e, {"accuracy": 0.2 + e / 10, "top_k_accuracy_5": 0.5,
                                                                       "cross-entropy": 2.0 - e})]
        lines += [ts % (10 + e) + mxlog.time_cost_line(e, 3.0)]
    lines += [ts % 30 + t for t in tail]
    path = tmp_path / "logs" / f"{prefix}.log"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    _age(path)
    return path


def test_status_from_end_lines_and_status_file(tmp_path):
    logs, ck = tmp_path / "logs", tmp_path / "ck"
    ck.mkdir()
    _ours(tmp_path, "done", ["Training finished: 2 epochs"])
    _ours(tmp_path, "nan", ["Error: the loss became nan at Epoch[1] Batch [3] on some rank; checkpoints ..."], epochs=5)
    _ours(tmp_path, "ctrlc", ['Stopped at Epoch[2] Batch [3]: Saved checkpoint to "x"', "to resume: ..."], epochs=5)
    (ck / "ctrlc-0002-b000003.pt").write_bytes(b"")  # not a checkpoint torch can read: the row goes on
    _ours(tmp_path, "killed", [], epochs=5)
    (logs / "killed.status.json").write_text(json.dumps({"status": "running", "pid": 2 ** 22 + 7,
                                                          "host": socket.gethostname()}))
    _ours(tmp_path, "alive", [], epochs=5)
    (logs / "alive.status.json").write_text(json.dumps({"status": "running", "pid": os.getpid(),
                                                         "host": socket.gethostname()}))
    _ours(tmp_path, "crashed", [], epochs=5)
    (logs / "crashed.status.json").write_text(json.dumps({"status": "failed", "code": None}))
    df = journal.journal(str(logs), str(ck)).set_index("prefix")
    assert df.loc["done", "status"] == "finished" and df.loc["done", "detail"] == ""
    assert df.loc["nan", "status"] == "failed" and df.loc["nan", "detail"].startswith("NaN: the loss became nan")
    assert df.loc["ctrlc", "status"] == "stopped"
    # the world size of the log's last launch goes into the resume command
    assert df.loc["ctrlc", "detail"] == f"torchrun --nproc_per_node=2 tools/resume.py --prefix ctrlc --checkpoints-dir {ck}"
    assert df.loc["ctrlc", "epochs_done"] == 2 and df.loc["ctrlc", "epochs_planned"] == 5
    assert df.loc["killed", "status"] == "stopped" and "gone without a word" in df.loc["killed", "detail"]
    assert df.loc["alive", "status"] == "running" and str(os.getpid()) in df.loc["alive", "detail"]
    assert df.loc["crashed", "status"] == "failed" and "ended by an exception" in df.loc["crashed", "detail"]
    assert df.loc["done", "wall_s"] == 30.0  # header 12:00:00 to the last line 12:00:30
    assert df.loc["done", "best_val_top1"] == pytest.approx(0.3) and df.loc["done", "best_epoch"] == 2


def test_flags_are_the_differences_from_the_recipe():
    cfg = {"recipe": "resnet18", "epochs": 90, "lr": 0.1, "width": 0.25, "act": "elu", "nesterov": True,
           "image_size": 64, "eval_resize": 73, "lr_step_epochs": [30, 60], "batch_size": 32, "prefix": "x",
           "logs_dir": "elsewhere", "num_classes": 10, "wd_on_bn_bias": False}
    # 73 = 256/224 of 64: derived from the image size, not a flag; 30,60 and lr 0.1 are resnet18's own
    assert journal.flags_from_defaults(cfg) == "--act elu --image-size 64 --nesterov --width 0.25"
    assert journal.flags_from_defaults({**cfg, "eval_resize": 80, "lr_step_epochs": [20]}) == \
        "--act elu --eval-resize 80 --image-size 64 --lr-step-epochs 20 --nesterov --width 0.25"
    assert journal.flags_from_defaults({"recipe": "not_a_recipe"}) == ""


def test_macro_scores_of_the_latest_evaluation(tmp_path):
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 5, 300), rng.integers(0, 6, 300)  # class 5 predicted, never true
    confusion = np.zeros((6, 6), np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    logs = tmp_path / "logs"
    _ours(tmp_path, "r", ["Training finished: 2 epochs"])
    write_csv(per_class_table(np.eye(6, dtype=np.int64)), str(logs / "r-0001-val-per-class.csv"))
    time.sleep(0.01)
    write_csv(per_class_table(confusion), str(logs / "r-0002-val-10crop-per-class.csv"))
    write_csv(per_class_table(np.eye(6, dtype=np.int64)), str(logs / "r-extra-0002-val-per-class.csv"))
    os.utime(logs / "r-0001-val-per-class.csv", (OLD, OLD))
    row = journal.journal(str(logs), str(tmp_path / "ck")).set_index("prefix").loc["r"]
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert (row["macro_precision"], row["macro_recall"], row["macro_f1"]) == pytest.approx((p, r, f), abs=1e-5)
    assert row["eval"] == "0002-val-10crop"


@pytest.fixture
def folder(tmp_path):
    _ours(tmp_path, "a_relu", ["Training finished: 2 epochs"], config={"act": "relu"})
    _ours(tmp_path, "a_elu", ["Training finished: 2 epochs"], config={"act": "elu", "lr": 0.01})
    _ours(tmp_path, "b_vgg", ["Training finished: 2 epochs"], config={"recipe": "vgg11", "act": "elu"})
    return tmp_path


def test_filter_sort_and_errors(folder):
    df = journal.journal(str(folder / "logs"), str(folder / "ck"))
    assert list(journal.select(df, ["recipe=resnet18"], "prefix")["prefix"]) == ["a_elu", "a_relu"]
    assert list(journal.select(df, ["act=elu"])["prefix"]) == ["a_elu", "b_vgg"]   # a training option
    assert list(journal.select(df, ["prefix=a_*", "lr=0.01"])["prefix"]) == ["a_elu"]
    df.loc[df["prefix"] == "b_vgg", "best_val_top1"] = 0.9
    assert list(journal.select(df, [], "best_val_top1")["prefix"])[0] == "b_vgg"  # best first
    for bad, match in [(["colour=red"], "no column or training option"), (["recipe"], "expected COLUMN=VALUE")]:
        with pytest.raises(UserError, match=match):
            journal.select(df, bad)
    with pytest.raises(UserError, match="--sort speed: no such column"):
        journal.select(df, [], "speed")


def test_cli_table_markdown_csv_and_plot(folder):
    args = ["--logs-dir", folder / "logs", "--checkpoints-dir", folder / "ck"]
    out = run_tool(RUNS, *args, "a_*", "--format", "markdown", "--sort", "prefix", "--csv", folder / "j.csv",
                   "--plot", folder / "j.png").stdout.splitlines()
    assert out[0].startswith("| prefix | recipe | flags | epochs | status | best_val_top1 |")
    assert out[2].startswith("| a_elu | resnet18 | --act elu --epochs 2 --lr 0.01 --nesterov --width 0.25 | 2/2 | finished | 0.3000 |")
    assert len(out) == 4
    csv = pd.read_csv(folder / "j.csv")
    assert list(csv.columns) == journal.COLUMNS and list(csv["prefix"]) == ["a_elu", "a_relu"]
    assert "best_val_top1" in csv and csv["best_val_top1"].tolist() == [0.3, 0.3]
    img = mpimg.imread(folder / "j.png")
    assert img.shape[:2] == (500, 1200) and (img[..., :3].mean(axis=2) < 0.9).mean() > 0.01
    runner, main = CliRunner(), load_command(str(RUNS))  # in this process: torch imported once
    table = runner.invoke(main, [str(a) for a in args] + ["--filter", "recipe=vgg11"])
    assert table.exit_code == 0 and "b_vgg" in table.stdout and "a_elu" not in table.stdout
    bad = runner.invoke(main, [str(a) for a in args] + ["--filter", "colour=red"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("Error: --filter colour=red")
    missing = runner.invoke(main, ["--logs-dir", str(folder / "nope"), "--checkpoints-dir", str(folder / "nope2")])
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1 and "neither" in missing.stderr


def test_run_records_how_it_ended_and_leaves_another_runs_file(tmp_path, monkeypatch):
    """toolkit/training.py's status file: failed with the exit status; a fresh run that refuses an
    existing prefix leaves that run's file as it was."""
    from toolkit.engine.config import make_config
    from toolkit.training import run
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    cfg = make_config("resnet18", data=str(tmp_path / "no_data"), logs_dir=str(tmp_path / "logs"),
                      checkpoints_dir=str(tmp_path / "ck"), prefix="r")
    assert run(cfg) == 2
    status = journal.read_status(str(tmp_path / "logs"), "r")
    assert status["status"] == "failed" and status["code"] == 2 and status["pid"] == os.getpid()
    row = journal.journal(str(tmp_path / "logs"), str(tmp_path / "ck")).iloc[0]
    assert row["status"] == "failed" and str(tmp_path / "no_data") in row["detail"]
    (tmp_path / "ck").mkdir(exist_ok=True)  # the pre-flight check may have made it
    (tmp_path / "ck" / "r-0001.pt").write_bytes(b"")
    (tmp_path / "logs" / "r.status.json").write_text('{"status": "finished"}')
    assert run(cfg) == 2  # refuses: checkpoints of a run named r exist
    assert journal.read_status(str(tmp_path / "logs"), "r") == {"status": "finished"}
