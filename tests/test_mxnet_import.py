"""tools/import_mxnet.py against files written by the real MXNet 1.9.1 (tests/data/mxnet191/models,
made by its gen_models.py): the .params and symbol readers, every operator's output against MXNet's
own, small Module checkpoints (pre-activation ResNet with bn_data, Inception-BN, a symbol in MXNet
0.8's keys), the tool's one-line errors, and the checkpoint taken by the other tools."""
import json
import os
import shutil
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import FIXTURES, REPO
from toolkit.errors import UserError
from toolkit.mxnet_import.graph import GraphNet
from toolkit.mxnet_import.importer import import_mxnet
from toolkit.mxnet_import.params import read_params, split_arg_aux
from toolkit.mxnet_import.symbol import read_symbol
from toolkit.sweep import load_command

MODELS = FIXTURES / "models"
OPS = sorted(p.name[:-len("-symbol.json")] for p in (MODELS / "ops").glob("*-symbol.json"))
TOOL = load_command(str(REPO / "tools" / "import_mxnet.py"))


def parity(model, prefix):
    x, want = np.load(f"{prefix}-input.npy"), np.load(f"{prefix}-logits.npy")
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / np.abs(want).max()), (got.argmax(1) == want.argmax(1)).all()


def test_params_reader_every_dtype_and_key_layout():
    expected = json.load(open(MODELS / "cases.json"))
    got = read_params(str(MODELS / "cases.params"))
    assert list(got) == list(expected)  # arg:/aux: prefixes kept by the reader, in file order
    for key, e in expected.items():
        assert str(got[key].dtype) == e["dtype"] and list(got[key].shape) == e["shape"], key
        assert np.array_equal(got[key].ravel(), np.array(e["values"], dtype=e["dtype"])), key
    assert set(split_arg_aux(got)) == {k.split(":")[-1] for k in expected}


@pytest.mark.parametrize("name", ["premagic", "v1"])
def test_params_reader_older_array_layouts(name):
    """Written by hand in the layouts before MXNet 0.11 (no magic; V1 magic) and read back by 1.9.1."""
    expected = json.load(open(MODELS / "cases.json"))
    got = read_params(str(MODELS / f"{name}.params"))
    for key, src in zip("abc", ("arg:w32", "arg:w64", "aux:w16")):
        assert str(got[key].dtype) == expected[src]["dtype"]
        assert np.array_equal(got[key].ravel(), np.array(expected[src]["values"], dtype=expected[src]["dtype"]))


def test_params_reader_unnamed_list_and_damaged_files(tmp_path):
    assert list(read_params(str(MODELS / "unnamed.params"))) == ["0"]
    data = open(MODELS / "cases.params", "rb").read()
    for bad, what in ((b"PK\x03\x04" + data[4:], "no NDArray list magic"), (data[:200], "ends early")):
        path = tmp_path / "bad.params"
        path.write_bytes(bad)
        with pytest.raises(UserError, match=what):
            read_params(str(path))
    sparse = bytearray(data)
    struct.pack_into("<i", sparse, 28, 1)  # the first array's storage type: row_sparse
    (tmp_path / "sparse.params").write_bytes(bytes(sparse))
    with pytest.raises(UserError, match="sparse"):
        read_params(str(tmp_path / "sparse.params"))


def test_legacy_symbol_gets_its_batchnorm_statistics_back():
    """MXNet 0.8's JSON: `param` keys, no version, no BatchNorm moving_mean/var variables."""
    sym = read_symbol(str(MODELS / "legacy_resnet18-symbol.json"))
    assert sym.version == 800
    bn = next(n for n in sym.nodes if n.name == "bn_data")
    assert [sym.nodes[i].name for i, _ in bn.inputs] == ["data", "bn_data_gamma", "bn_data_beta",
                                                        "bn_data_moving_mean", "bn_data_moving_var"]
    assert bn.attrs["fix_gamma"] == "True" and bn.attrs["eps"] == "2e-05"
    assert all(j < i for i, n in enumerate(sym.nodes) for j, _ in n.inputs)  # still topological


@pytest.mark.parametrize("name", OPS)
def test_each_operator_matches_mxnet(name):
    """One graph per operator and option (pooling's full convention with padding, count_include_pad,
    an empty window; BatchNorm's defaults, fix_gamma, use_global_stats; LRN; every LeakyReLU...)."""
    prefix = str(MODELS / "ops" / name)
    from toolkit.mxnet_import.convert import convert
    graph, state = convert(read_symbol(prefix + "-symbol.json"), split_arg_aux(read_params(prefix + "-0000.params")),
                           None, "s", "p")
    model = GraphNet(graph)
    model.load_state_dict(state, strict=False)
    rel, _ = parity(model.eval(), prefix)
    assert rel < 1e-5


@pytest.mark.parametrize("name,size", [("mod_resnet18", 32), ("legacy_resnet18", 32), ("mod_inception_bn", 64)])
def test_module_checkpoints_match_mxnet(name, size, tmp_path):
    shutil.copytree(MODELS, tmp_path / "m", ignore=shutil.ignore_patterns("ops"))
    if name == "legacy_resnet18":  # the same weights as mod_resnet18 (kept once in the repository)
        shutil.copy(tmp_path / "m" / "mod_resnet18-0000.params", tmp_path / "m" / "legacy_resnet18-0000.params")
    state, model, lines = import_mxnet(str(tmp_path / "m" / name), 0, image_size=size)
    rel, top1 = parity(model, str(tmp_path / "m" / name))
    assert rel < 1e-4 and top1
    dropped = [r for done in model.done for r in done]  # every map freed after its last reader, once
    assert sorted(dropped) == sorted({r for _, refs in model.steps for r, _ in refs}) and "fc1" not in dropped
    graph = json.loads(state["config"]["graph"])
    assert graph["head"] == "fc1" and graph["head_op"] == "SoftmaxOutput" and graph["classes"] == 10
    if "resnet" in name:  # bn_data on raw pixels: no outside normalisation
        assert state["meta"]["mean"] == [0.0, 0.0, 0.0] and state["meta"]["std"] == [1.0, 1.0, 1.0]
        assert "bn_data" in lines[2]


def invoke(args):
    return CliRunner().invoke(TOOL, [str(a) for a in args])


def broken_copy(tmp_path, edit):
    """mod_resnet18's files with its symbol JSON changed by edit(doc)."""
    for f in ("mod_resnet18-symbol.json", "mod_resnet18-0000.params"):
        shutil.copy(MODELS / f, tmp_path / f)
    doc = json.load(open(tmp_path / "mod_resnet18-symbol.json"))
    edit(doc)
    json.dump(doc, open(tmp_path / "mod_resnet18-symbol.json", "w"))
    return tmp_path / "mod_resnet18"


def _node(doc, name):
    return next(n for n in doc["nodes"] if n["name"] == name)


def _rename(doc, old, new):
    _node(doc, old)["name"] = new


ERRORS = [
    (lambda d: None, ["--epoch", "7"], "mod_resnet18-0007.params: not found; --epoch N picks"),
    (lambda d: _rename(d, "stage2_unit1_conv1_weight", "conv_w"), [], "no weight conv_w (the weight of node stage2_unit1_conv1)"),
    (lambda d: _node(d, "fc1")["attrs"].update(num_hidden="12"), [], "fc1_weight (the weight of node fc1) is 10x32"),
    (lambda d: _node(d, "stage1_unit1_conv1")["attrs"].update(kernel="(5, 5)"), [], "needs a 5x5 kernel"),
    (lambda d: None, ["--output", "nope"], "--output nope: no such output"),
    (lambda d: [_node(d, n).update(op="ROIPooling") for n in ("relu0", "relu1")], [],
     "operator not taken by the importer: ROIPooling (node relu0; 2 nodes)"),
]


@pytest.mark.parametrize("edit,extra,message", ERRORS)
def test_tool_bad_input_is_one_line_and_writes_nothing(tmp_path, edit, extra, message):
    prefix = broken_copy(tmp_path, edit)
    out = tmp_path / "out.pt"
    result = invoke([prefix, "--epoch", "0", "--out", out, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_tool_missing_files_and_not_params(tmp_path):
    result = invoke([tmp_path / "none", "--epoch", "0", "--out", tmp_path / "o.pt"])
    assert result.exit_code == 2 and "none-symbol.json: not found" in result.output
    prefix = broken_copy(tmp_path, lambda d: None)
    open(f"{prefix}-0000.params", "wb").write(b"\x00" * 64)
    result = invoke([prefix, "--epoch", "0", "--out", tmp_path / "o.pt"])
    assert result.exit_code == 2 and "not an MXNet .params file" in result.output
    assert not (tmp_path / "o.pt").exists()


def test_gluon_save_parameters_alone_says_how_to_export(tmp_path):
    """net.save_parameters writes weights and no symbol: say so and how to get one, not 'not found'."""
    shutil.copy(MODELS / "ops" / "conv_no_bias-0000.params", tmp_path / "net.params")
    for prefix in (tmp_path / "net", tmp_path / "net.params"):
        result = invoke([prefix, "--epoch", "0", "--out", tmp_path / "o.pt"])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert "weights without a graph" in result.output and "net.export(PREFIX, 0)" in result.output
    assert not (tmp_path / "o.pt").exists()


def test_pick_another_output_by_name(tmp_path):
    prefix = broken_copy(tmp_path, lambda d: None)
    state, model, _ = import_mxnet(str(prefix), 0, output="stage4_unit2_conv2_output", image_size=32)
    graph = json.loads(state["config"]["graph"])
    assert graph["output"][0] == "stage4_unit2_conv2" and graph["classes"] == 32 and "fc1" not in graph["head"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """mod_resnet18 imported by the tool, with class names."""
    root = tmp_path_factory.mktemp("imported")
    (root / "synset.txt").write_text("".join(f"n{i:08d} class {i}\n" for i in range(10)))
    out = root / "ck" / "r18-0000.pt"
    result = invoke([MODELS / "mod_resnet18", "--epoch", "0", "--out", out, "--image-size", "32",
                     "--classes", root / "synset.txt"])
    assert result.exit_code == 0, result.output
    return out


def test_checkpoint_is_ours_with_the_graph_as_data(imported):
    state = torch.load(imported, weights_only=True)  # no pickled code in it
    assert state["config"]["recipe"] == "mxnet" and json.loads(state["config"]["graph"])["format"] == "mxnet-graph/1"
    meta = state["meta"]
    assert meta["class_names"][3] == "n00000003" and meta["image_size"] == 32 and meta["num_classes"] == 10
    assert "graph" not in meta["model_kwargs"]


def test_predict_and_export_take_it(imported, tmp_path):
    from toolkit.inference.export import export
    from toolkit.engine.model import load_member
    member = load_member(str(imported))
    x, want = np.load(MODELS / "mod_resnet18-input.npy"), np.load(MODELS / "mod_resnet18-logits.npy")
    with torch.no_grad():
        got = member.model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    r = export(member, "exported-program", str(tmp_path / "m.pt2"), 1e-3, 1e-3)
    assert r["max_abs_logit_error"] < 1e-3 and os.path.exists(tmp_path / "m.pt2")


def test_recipe_mxnet_needs_a_graph_and_other_recipes_refuse_one(imported):
    from toolkit.engine.config import make_config
    from toolkit.registry import build_model
    from toolkit.transfer.hook import Transfer
    from toolkit.transfer.weights import read_source
    with pytest.raises(UserError, match="recipe mxnet runs an imported MXNet graph"):
        build_model("mxnet", num_classes=3)
    source = read_source(str(imported))
    with pytest.raises(UserError, match="is an imported MXNet model: train it with --recipe mxnet"):
        Transfer(make_config("resnet18"), None, True, source).graph(make_config("resnet18"))
    cfg = Transfer(make_config("mxnet"), None, True, source).graph(make_config("mxnet", num_classes=4))
    model = build_model("mxnet", **cfg.model_kwargs())
    assert model.fc1.weight.shape == (4, 32)  # a new head for 4 classes
    params = dict(model.named_parameters())  # fix_gamma's gamma never learns (and DDP finds no unused one)
    assert "bn_data.weight" not in params and "bn0.weight" in params and "bn_data.bias" in params
    assert "sha256:" in cfg.to_json() and len(cfg.to_json()) < 3000  # the log header: the graph's digest


def test_an_input_size_the_graph_cannot_take_is_one_line(tmp_path):
    """A FullyConnected over a flattened map fixes the input size: --init-from says which to pass."""
    from toolkit.engine.config import make_config
    from toolkit.transfer.hook import Transfer
    from toolkit.transfer.weights import read_source
    out = tmp_path / "fc.pt"
    assert invoke([MODELS / "ops" / "fc_flatten", "--epoch", "0", "--out", out, "--image-size", "2"]).exit_code == 0
    result = invoke([MODELS / "ops" / "fc_flatten", "--epoch", "0", "--out", out, "--image-size", "5"])
    assert result.exit_code == 2 and "does not run on a 5x5 image (node f (Linear)" in result.output
    transfer = Transfer(make_config("mxnet"), None, True, read_source(str(out)))
    with pytest.raises(UserError, match=r"does not run on a 224x224 image .*; pass --image-size 2 \(its size\)"):
        transfer.graph(make_config("mxnet"))
    assert transfer.graph(make_config("mxnet", image_size=2)).graph


@pytest.mark.slow
def test_fine_tune_an_imported_model_with_a_new_head(imported, tmp_path):
    """train.py --recipe mxnet --init-from: a new 4-class head, the body frozen for an epoch; resume."""
    from tests.test_engine_runs import launcher, run
    from toolkit.toy import ensure_toy_dataset
    data = ensure_toy_dataset(str(tmp_path / "sym4"), images_per_class=4, num_classes=4, quiet=True,
                              variant="symbols")
    ck = tmp_path / "ck"
    run([*launcher(1), "tools/train.py", "--recipe", "mxnet", "--init-from", str(imported), "--freeze-epochs", "1",
         "--epochs", "1", "--image-size", "32", "--data", data, "--batch-size", "8", "--workers", "0",
         "--prefix", "ft", "--logs-dir", str(ck), "--checkpoints-dir", str(ck)])
    log = open(ck / "ft.log").read()
    assert "init new (as built here: a new head): fc1.weight, fc1.bias" in log
    assert "normalisation: mean (0.000, 0.000, 0.000) std (1.000, 1.000, 1.000): the source's" in log
    src = torch.load(imported, weights_only=True)["model"]
    tuned = torch.load(ck / "ft-0001.pt", weights_only=True)["model"]
    assert torch.equal(src["stage1_unit1_conv1.weight"], tuned["stage1_unit1_conv1.weight"])  # frozen in Epoch[0]
    assert tuned["fc1.weight"].shape == (4, 32)
    run([*launcher(1), "tools/resume.py", "--prefix", "ft", "--checkpoints-dir", str(ck), "--epochs", "2",
         "--workers", "0"])
    assert not torch.equal(src["stage1_unit1_conv1.weight"],
                           torch.load(ck / "ft-0002.pt", weights_only=True)["model"]["stage1_unit1_conv1.weight"])


def test_visualize_normalises_as_the_model_was_trained(imported, tmp_path):
    """An imported bn_data ResNet takes raw pixels (mean 0, std 1): the visualizations feed it so,
    not with the dataset's mean/std."""
    from toolkit.toy import ensure_toy_dataset
    from toolkit.visualize.run import load_run
    data = ensure_toy_dataset(str(tmp_path / "toy"), images_per_class=2, quiet=True)
    os.remove(os.path.join(data, "classes.tsv"))  # as MXNet's im2rec makes them: numbered classes only
    run = load_run(str(imported.parent), "r18", 0, data=data, device="cpu")
    assert run.mean.flatten().tolist() == [0.0, 0.0, 0.0] and run.std.flatten().tolist() == [1.0, 1.0, 1.0]
