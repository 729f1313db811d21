"""Transfer learning end to end on CPU: fine-tuning from our checkpoint with --freeze-epochs (a
frozen body, BatchNorm statistics included, until the unfreeze epoch; Ctrl-C and resume across it
bit-identical to a straight run), features from 2 processes equal to 1 process's, one-line errors."""
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from tests.test_engine_runs import ENV, launcher, run, start_and_interrupt, weights
from tests.conftest import REPO
from toolkit.toy import ensure_toy_dataset

pytestmark = pytest.mark.slow

TINY = ["--recipe", "resnet20", "--image-size", "32", "--batch-size", "8", "--workers", "1",
        "--log-every", "1", "--seed", "4"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The toy set (10 classes x 12 images) and the symbols variant (4 classes x 20 images: 64 train)."""
    root = tmp_path_factory.mktemp("sets")
    first = ensure_toy_dataset(str(root / "shapes"), images_per_class=12, quiet=True)
    second = ensure_toy_dataset(str(root / "symbols"), images_per_class=20, num_classes=4, quiet=True,
                                variant="symbols")
    ck = root / "pre"
    run([*launcher(1), "tools/train.py", *TINY, "--data", first, "--epochs", "1", "--prefix", "pre",
         "--logs-dir", str(ck), "--checkpoints-dir", str(ck)])
    return first, second, str(ck / "pre-0001.pt")


def finetune_args(second, source, root, name):
    return [*TINY, "--data", second, "--init-from", source, "--freeze-epochs", "1", "--epochs", "2",
            "--head-lr-mult", "10", "--lr", "0.05", "--prefix", name, "--logs-dir", str(root),
            "--checkpoints-dir", str(root)]


def test_frozen_body_then_unfrozen_and_resume_across_the_unfreeze_point(sets, tmp_path):
    _, second, source = sets
    a, b = tmp_path / "a", tmp_path / "b"
    run([*launcher(1), "tools/train.py", *finetune_args(second, source, a, "ft")])
    log = open(a / "ft.log").read()
    assert "init new (as built here: a new head): fc.weight, fc.bias" in log
    assert "Epoch[1] body unfrozen: 0 of" in log and "normalisation: mean" in log
    src, after0, after1 = weights(source), weights(a / "ft-0001.pt"), weights(a / "ft-0002.pt")
    body = [k for k in after0 if not k.startswith("fc.")]
    # frozen in Epoch[0]: weights, BN affine parameters, running statistics, batch counts
    assert all(torch.equal(after0[k], src[k]) for k in body)
    moved = [k for k in body if not torch.equal(after1[k], after0[k])]
    assert "stem.0.weight" in moved and "stem.1.running_mean" in moved and "layers.8.branch.1.1.running_var" in moved
    # Ctrl-C in the frozen epoch, resume: the same weights as the straight run
    cmd = [*launcher(1), "tools/train.py", *finetune_args(second, source, b, "ft")]
    rc, out = start_and_interrupt(cmd, str(b / "ft.log"), r"Epoch\[0\] Batch \[0-1\]")
    assert rc == 130, out
    assert list(b.glob("ft-0000-b*.pt")), os.listdir(b)
    run([*launcher(1), "tools/resume.py", "--checkpoints-dir", str(b), "--prefix", "ft"])
    for name in ("ft-0001.pt", "ft-0002.pt"):
        wa, wb = weights(a / name), weights(b / name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    assert "Epoch[1] body unfrozen" in open(b / "ft.log").read()
    # resume exactly at the unfreeze point (from the epoch checkpoint)
    c = tmp_path / "c"
    c.mkdir()
    shutil.copy(a / "ft-0001.pt", c / "ft-0001.pt")
    run([*launcher(1), "tools/resume.py", "--checkpoints-dir", str(c), "--prefix", "ft"])
    wa, wc = weights(a / "ft-0002.pt"), weights(c / "ft-0002.pt")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def extract(nproc, source, data, out):
    return run([*launcher(nproc), "tools/extract_features.py", "--init-from", source, "--data", data,
                "--split", "train", "--batch-size", "5", "--workers", "0", "--out", str(out)])


def test_features_of_two_processes_equal_one_process(sets, tmp_path):
    _, second, source = sets
    extract(1, source, second, tmp_path / "one")
    proc = extract(2, source, second, tmp_path / "two")
    assert "64 x 64 float32, world size 2" in proc.stdout
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert one.shape == (64, 64) and np.abs(one).sum() > 0
    assert np.array_equal(two, one)  # same order, same values (batches differ: 5 images each from 0 and 32)
    for suffix in (".labels.npy", ".ids.npy"):
        assert np.array_equal(np.load(tmp_path / f"one{suffix}"), np.load(tmp_path / f"two{suffix}"))
    assert sorted(os.listdir(tmp_path)) == sorted(f"{s}{x}" for s in ("one", "two")
                                                  for x in (".npy", ".labels.npy", ".ids.npy", ".json"))
    layers = run([*launcher(1), "tools/extract_features.py", "--init-from", source, "--list-layers"]).stdout
    assert "fc " in layers and "<- its input is the default --layer" in layers.splitlines()[-1]
    assert any(line.startswith("layers.8 ") and " 64x8x8 " in line for line in layers.splitlines())


@pytest.mark.parametrize("args,message", [
    (["tools/train.py", "--init-from", "missing.pt"], "--init-from missing.pt: no such file"),
    (["tools/train.py", "--init-from", "torchvision:resnet18", "--recipe", "resnet18"],
     "download https://download.pytorch.org/models/resnet18-f37072fd.pth and put it in"),
    (["tools/train.py", "--init-from", "SOURCE", "--freeze-until", "layers.77"], "--freeze-until layers.77: no such layer"),
    (["tools/extract_features.py", "--init-from", "SOURCE", "--layer", "layers.77", "--out", "x"],
     "--layer layers.77: no such layer"),
])
def test_mistakes_are_one_line(sets, tmp_path, args, message):
    _, second, source = sets
    tool, rest = args[0], [source if a == "SOURCE" else a for a in args[1:]]
    base = [*TINY, "--prefix", "x", "--logs-dir", str(tmp_path), "--checkpoints-dir", str(tmp_path)] \
        if tool.endswith("train.py") else []
    if "--recipe" in rest:  # the recipe given last wins in click: drop TINY's
        i = base.index("--recipe")
        del base[i:i + 2]
    cmd = [*launcher(1), tool, *base, "--data", second, *rest]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(ENV, TORCH_HOME=str(tmp_path / "hub")), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


RANKS_SCRIPT = '''
import sys, torch, torch.distributed as tdist
from toolkit.engine import dist
from toolkit.engine.config import make_config
from toolkit.engine.logs import setup_logging
from toolkit.engine.preflight import settle_num_classes
from toolkit.engine.trainer import Trainer
from toolkit.transfer.hook import Transfer
data, source, out = sys.argv[1:4]
env = dist.setup()
log = setup_logging(out + "/r.log", env.main)
cfg = settle_num_classes(make_config("resnet20", image_size=32, batch_size=8, workers=0, seed=4, data=data,
                          init_from=source, freeze_epochs=1, epochs=2, lr=0.05, prefix="r", logs_dir=out,
                          checkpoints_dir=out), env, log)
trainer = Trainer(cfg, env, log, hook=Transfer)
trainer.fit()
flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
every = [torch.zeros_like(flat) for _ in range(env.world)]
tdist.all_gather(every, flat)
if env.main:
    print("ranks identical:", all(torch.equal(every[0], f) for f in every))
dist.teardown()
'''


def test_two_processes_stay_in_step_after_the_unfreeze(sets, tmp_path):
    """DDP syncs only the parameters that learned when it was built: it is rebuilt at the unfreeze
    (without that, the body's gradients are never all-reduced and the ranks drift apart)."""
    _, second, source = sets
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    proc = run([*launcher(2), str(script), second, source, str(tmp_path)])
    assert "ranks identical: True" in proc.stdout, proc.stdout
    assert "Epoch[1] body unfrozen" in open(tmp_path / "r.log").read()
