"""The README's first command, tools/quickstart.sh, at a small scale: every artifact checked."""
import json
import os
import re
import subprocess

import matplotlib.image as mpimg
import pandas as pd
import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_quickstart_runs_the_whole_workflow(tmp_path):
    env = dict(os.environ, QUICKSTART_DIR=str(tmp_path), QUICKSTART_EPOCHS="4", QUICKSTART_STOP_EPOCH="2",
               QUICKSTART_IMAGES_PER_CLASS="50", QUICKSTART_LOG_EVERY="2")
    proc = subprocess.run(["bash", "tools/quickstart.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data, logs, ckpt = tmp_path / "data" / "toy", tmp_path / "logs", tmp_path / "checkpoints"
    # data: lists and shards made by tools/im2rec.py, MXNet's way
    for name in ("toy_train.lst", "toy_val.lst", "toy_train.rec", "toy_train.idx", "toy_val.rec",
                 "toy_val.idx", "classes.tsv", "toy_train.mean_std.json"):
        assert (data / name).stat().st_size > 0, name
    n_val = len((data / "toy_val.lst").read_text().splitlines())
    assert n_val == 100 and len((data / "classes.tsv").read_text().splitlines()) == 10
    # Ctrl-C in the middle of the run, then a resume with the lower LR
    assert sorted(p.name for p in ckpt.glob("toy_resnet18-????.pt")) == [f"toy_resnet18-{e:04d}.pt" for e in (1, 2, 3, 4)]
    log = (logs / "toy_resnet18.log").read_text()
    # the stop lands one step after the signal: in the epoch (a -bNNNNNN checkpoint) or, if that was
    # the epoch's last step, at its end (the epoch checkpoint)
    stopped = re.findall(r'Stopped at Epoch\[\d+\] Batch \[\d+\]: Saved checkpoint to "([^"]+)"|'
                         r"Stopped after Epoch\[\d+\]: (\S+)", log)
    assert len(stopped) == 1 and "world size 2" in log, log
    stop = stopped[0][0] or stopped[0][1]
    assert os.path.exists(stop) and len(list(ckpt.glob("toy_resnet18-*-b*.pt"))) == bool(re.search(r"-b\d{6}\.pt$", stop))
    assert f'Resumed training from "{stop}"' in log and "with lr=2.00000e-02" in log
    assert all(f"Epoch[{e}] Validation-accuracy=" in log for e in range(4))
    assert torch.load(ckpt / "toy_resnet18-0004.pt", weights_only=True)["config"]["lr"] == 0.02
    # evaluation: JSON last line, CSVs
    result = json.loads((logs / "toy_resnet18-eval.txt").read_text().strip().splitlines()[-1])
    assert result["images"] == n_val and 0.2 < result["rank1"] <= result["rank5"] <= 1
    assert f"Epoch[3] Validation-accuracy={result['rank1']:f}" in log
    assert len(pd.read_csv(result["per_class_csv"])) == 10
    # curves: the table and a PNG that is not blank
    table = pd.read_csv(logs / "toy_resnet18.csv", index_col=0)
    assert list(table.index) == [0, 1, 2, 3] and table["lr"].iloc[-1] == pytest.approx(0.02)
    png = mpimg.imread(logs / "toy_resnet18.png")
    assert png.shape[0] > 300 and png.shape[1] > 600 and (png[..., :3] < 0.9).mean() > 0.01
    # it says where everything is
    for what in ("log:", "checkpoints:", "evaluation:", "curves:"):
        assert what in proc.stdout
