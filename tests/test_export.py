"""tools/export.py: every recipe family exports to ONNX and to an ExportedProgram whose outputs match
PyTorch's (checked here independently of the export's own check, at a batch size it never saw), and
an export that does not match is not written."""
import json

import pytest
import torch

from toolkit.data.discovery import DatasetInfo
from toolkit.engine.config import make_config
from toolkit.errors import UserError
from toolkit.inference import export as ex
from toolkit.engine.meta import describe
from toolkit.engine.model import build_eval_model
from toolkit.engine.model import Member

# a tiny network of each family (width, input size)
FAMILIES = {"resnet18": (0.125, 32), "alexnet": (0.0625, 64), "vgg11_bn": (0.0625, 32),
            "googlenet": (0.0625, 64), "squeezenet1_1": (0.125, 64)}
INFO = DatasetInfo(4, ["a", "b", "c", "d"], (120.0, 110.0, 100.0), (60.0, 55.0, 50.0))


def tiny_member(recipe: str, tmp_path) -> Member:
    width, size = FAMILIES[recipe]
    cfg = make_config(recipe, width=width, image_size=size, num_classes=4, data=str(tmp_path))
    torch.manual_seed(0)
    from toolkit.registry import build_model
    if recipe == "googlenet":  # with its auxiliary heads, which the export must leave out
        model = build_model(recipe, aux_logits=True, **cfg.model_kwargs()).eval()
    else:
        model = build_eval_model(cfg, {"model": build_model(recipe, **cfg.model_kwargs()).state_dict()})
    with torch.no_grad():  # BatchNorm statistics other than the identity, so eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return Member(f"{recipe}-0001.pt", model, describe(cfg, INFO), cfg)


def run_exported(fmt, path, x):
    return ex.run_onnx(path, x) if fmt == "onnx" else ex.run_program(path, x)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(FAMILIES))
def test_every_family_exports_and_matches(recipe, tmp_path):
    member = tiny_member(recipe, tmp_path)
    x = ex.sample_batch(member.meta, 5, seed=9)
    with torch.no_grad():
        ref = member.model(x)
    for fmt, suffix in ex.FORMATS.items():
        out = str(tmp_path / f"m{suffix}")
        result = ex.export(member, fmt, out)
        assert result["max_abs_logit_error"] <= 1e-3 + 1e-3 * result["max_abs_logit"]
        got = run_exported(fmt, out, x)
        assert got.shape == (5, 4)
        assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()
        side = json.loads(open(out + ".json").read())
        assert side["class_names"] == ["a", "b", "c", "d"] and side["preprocessing"]["mean"] == [120.0, 110.0, 100.0]
        assert side["input"]["shape"][0] == "batch"
        if fmt == "onnx":
            import onnx
            graph = onnx.load(out).graph
            assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    if recipe == "googlenet":
        assert any("aux" in k for k in member.model.state_dict())
        assert not any("aux" in k for k in torch.export.load(str(tmp_path / "m.pt2")).state_dict)


def test_export_refuses_a_mismatch(tmp_path, monkeypatch):
    member = tiny_member("resnet18", tmp_path)
    monkeypatch.setattr(ex, "run_program", lambda path, x: member.model(x).detach() + 0.1)
    out = tmp_path / "m.pt2"
    with pytest.raises(UserError, match="differ from PyTorch"):
        ex.export(member, "exported-program", str(out))
    assert not out.exists() and not list(tmp_path.glob(".m.pt2*"))


@pytest.mark.parametrize("tool, args", [("tools/export.py", ["--format", "exported-program"]),
                                        ("tools/visualize.py", ["gradcam"]),
                                        ("tools/predict.py", ["x.jpg", "--csv"])])
def test_an_unwritable_out_is_one_line_before_the_checkpoint_is_read(tool, args, tmp_path):
    from tests.helpers import invoke_tool
    blocker = tmp_path / "file"
    blocker.write_text("")
    flag = "--csv" if args[-1] == "--csv" else "--out"
    for out in (tmp_path, blocker / "sub" / "x.out"):  # a folder; under a file
        cmd = args + [out] if flag == "--csv" else args + ["--out", out]
        proc = invoke_tool(tool, *cmd, "--checkpoints-dir", tmp_path / "none", check=False)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and flag in proc.stderr, proc.stderr
