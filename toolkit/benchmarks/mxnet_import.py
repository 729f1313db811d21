"""`tools/benchmark.py mxnet-import`: the importer's parity with MXNet 1.9.1, one network at a time.

For each network the oracle (.mxnet-venv) writes the model files (Gluon model zoo with random
weights, exported; or example/image-classification-style Module checkpoints) and its own logits on
a random input (tests/data/mxnet191/gen_models.py); the importer reads the files and runs the same
input. Prints the table: max |diff|, max |diff| / max |MXNet logit|, top-1 agreement, import time
(in this process, interpreter start and imports excluded). Files are removed after each network.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time

import click
import numpy as np
import torch

from toolkit.benchmarks.oracle import MXNET_PYTHON, REPO
from toolkit.errors import UserError

ZOO = ("alexnet,vgg11,vgg11_bn,vgg13,vgg13_bn,vgg16,vgg16_bn,vgg19,vgg19_bn,resnet18_v1,resnet34_v1,resnet50_v1,"
       "resnet101_v1,resnet152_v1,resnet18_v2,resnet34_v2,resnet50_v2,resnet101_v2,resnet152_v2,squeezenet1.0,"
       "squeezenet1.1,densenet121,densenet161,densenet169,densenet201,inceptionv3,mobilenet1.0,mobilenet0.25,"
       "mobilenetv2_1.0,mobilenetv2_0.25")
MODULES = "mod_resnet18,legacy_resnet18,mod_inception_bn,mod_alexnet"
GEN = os.path.join(REPO, "tests", "data", "mxnet191", "gen_models.py")


def size_of(name: str) -> int:
    return 299 if name == "inceptionv3" else 160 if name == "mod_alexnet" else 64 if name.startswith(("mod_", "legacy_")) else 224


def parity(folder: str, name: str) -> dict:
    from toolkit.mxnet_import.importer import import_mxnet
    t = time.perf_counter()
    _, model, _ = import_mxnet(os.path.join(folder, name), 0, image_size=size_of(name))
    seconds = time.perf_counter() - t
    x, want = np.load(os.path.join(folder, name + "-input.npy")), np.load(os.path.join(folder, name + "-logits.npy"))
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(got - want).max())
    return {"network": name, "max_abs": diff, "max_rel": diff / float(np.abs(want).max()),
            "top1": f"{int((got.argmax(1) == want.argmax(1)).sum())}/{len(x)}", "import_s": seconds}


@click.command()
@click.option("--networks", default=ZOO + "," + MODULES, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--mxnet-python", default=os.environ.get("MXNET_PYTHON", MXNET_PYTHON), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Last line: one JSON list.")
def cli(networks, batch, mxnet_python, as_json):
    rows = []
    print("| network | max abs diff | max rel diff | top-1 agrees | import s |\n|---|---|---|---|---|")
    for name in networks.split(","):
        folder = tempfile.mkdtemp(prefix="mxnet-import-")
        try:
            proc = subprocess.run([mxnet_python, GEN, folder, name, "--size", str(size_of(name)), "--batch",
                                   str(batch)], capture_output=True, text=True)
            if proc.returncode:
                raise UserError(f"{name}: the oracle failed: {(proc.stderr.strip().splitlines() or [''])[-1]}")
            r = parity(folder, name)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        rows.append(r)
        print(f"| {name} | {r['max_abs']:.2e} | {r['max_rel']:.2e} | {r['top1']} | {r['import_s']:.2f} |", flush=True)
    if as_json:
        print(json.dumps(rows))
