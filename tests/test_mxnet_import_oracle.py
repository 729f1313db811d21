"""tools/import_mxnet.py against the real MXNet 1.9.1, files made fresh by the oracle: Gluon model zoo
networks (random weights, hybridized, net.export) and an AlexNet Module checkpoint with LRN, parity to
1e-4 of MXNet's logits. The whole zoo: tools/benchmark.py mxnet-import (README, "Coming from MXNet")."""
import subprocess

import numpy as np
import pytest
import torch

from tests.conftest import FIXTURES
from toolkit.mxnet_import.importer import import_mxnet

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

NETS = {"squeezenet1.1": 224, "mobilenetv2_0.25": 224, "resnet18_v2": 224, "mod_alexnet": 160}


@pytest.fixture(scope="module")
def made(mxnet_python, tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle_models")
    for size in sorted(set(NETS.values())):
        names = ",".join(n for n, s in NETS.items() if s == size)
        subprocess.run([mxnet_python, str(FIXTURES / "gen_models.py"), str(root), names, "--size", str(size)],
                       check=True, capture_output=True, timeout=600)
    return root


@pytest.mark.parametrize("name", sorted(NETS))
def test_imported_network_matches_mxnet(made, name):
    state, model, _ = import_mxnet(str(made / name), 0, image_size=NETS[name])
    x, want = np.load(made / f"{name}-input.npy"), np.load(made / f"{name}-logits.npy")
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).all()
    mean = state["meta"]["mean"]
    if name.startswith("mod_"):  # example/image-classification's --rgb-mean; Gluon's zoo: ImageNet's
        assert mean == [123.68, 116.779, 103.939] and state["meta"]["std"] == [1.0, 1.0, 1.0]
    else:
        assert mean == [123.675, 116.28, 103.53]
