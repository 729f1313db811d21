"""Write every MXNet 1.9.1 fixture of this folder into OUT, with the real MXNet (the oracle).

Run it with the oracle's interpreter, from anywhere:

    .mxnet-venv/bin/python tests/data/mxnet191/make.py OUT

OUT may be this folder itself (to refresh the committed files) or any other (tests/test_fixtures.py
writes into a temporary folder and compares with the committed files). Inputs, read from this
folder and never written: im2rec/imgs/ (tiny images, kept in the repository), gen_recordio.py and
gen_log.py (the scripts that made the RecordIO and log fixtures), gen_models.py (the model files). What MXNet writes differently
on each run: the logs' "Speed: ... samples/sec" and "Time cost=..." figures (wall-clock
measurements); everything else is deterministic.
"""
import os
import shutil
import subprocess
import sys

import mxnet

HERE = os.path.dirname(os.path.abspath(__file__))
IM2REC = os.path.join(os.path.dirname(mxnet.__file__), "tools", "im2rec.py")
# a multi-label list (MXNet's im2rec --list writes single labels only): the input of --pack-label
ML_LST = "0\t1.5\t2\t3\tcat/cat_0.jpg\n1\t4\t5\t6\tdog/dog_0.jpg\n"


def run(args, cwd):
    subprocess.run([sys.executable] + args, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def make_recordio(out):
    """raw.rec/idx, packed.rec/idx and their expected payloads (JSON)."""
    run([os.path.join(HERE, "gen_recordio.py")], cwd=out)


def make_logs(out):
    """logs/{module,feedforward}_training_{0,2}.log: two epochs, then two more resumed from epoch 2's
    checkpoint (written to out/ck, removed afterwards: no test reads it)."""
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    for api in ("module", "feedforward"):
        for begin in (0, 2):
            run([os.path.join(HERE, "gen_log.py"), f"logs/{api}_training_{begin}.log", api, str(begin)], cwd=out)
    shutil.rmtree(os.path.join(out, "ck"))


def make_im2rec(out):
    """im2rec/: lists (shuffled with MXNet's seed 100), chunked splits, encoded and pass-through records."""
    dst, imgs = os.path.join(out, "im2rec"), os.path.join(HERE, "im2rec", "imgs")
    os.makedirs(dst, exist_ok=True)
    prefix = lambda name: os.path.join(dst, name)  # absolute: im2rec lists the prefix's folder
    run([IM2REC, "--list", "--recursive", prefix("data"), imgs], cwd=dst)
    run([IM2REC, "--list", "--recursive", "--chunks", "2", "--train-ratio", "0.6", "--test-ratio", "0.2",
         prefix("split"), imgs], cwd=dst)
    # quality 90, not im2rec's default 95: the quality the committed data.rec was made with
    run([IM2REC, "--resize", "16", "--quality", "90", "--num-thread", "2", prefix("data"), imgs], cwd=dst)
    with open(prefix("ml.lst"), "w") as f:
        f.write(ML_LST)
    run([IM2REC, "--pass-through", "--pack-label", prefix("ml"), imgs], cwd=dst)


def make_models(out):
    """models/: .params of every layout, small Module checkpoints (and one symbol in MXNet 0.8's keys,
    sharing mod_resnet18's weights), one graph per operator in models/ops/, with MXNet's outputs."""
    gen, dst = os.path.join(HERE, "gen_models.py"), os.path.join(out, "models")
    run([gen, dst, "params_cases,mod_resnet18,legacy_resnet18", "--size", "32"], cwd=out)
    run([gen, dst, "mod_inception_bn", "--size", "64"], cwd=out)
    run([gen, os.path.join(dst, "ops"), "ops"], cwd=out)
    os.remove(os.path.join(dst, "legacy_resnet18-0000.params"))  # the same bytes as mod_resnet18's


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT  (run with .mxnet-venv/bin/python)")
    out = os.path.abspath(sys.argv[1])
    os.makedirs(out, exist_ok=True)
    make_recordio(out)
    make_logs(out)
    make_im2rec(out)
    make_models(out)


if __name__ == "__main__":
    main()
