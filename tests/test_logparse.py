"""toolkit.logparse / plots and tools/plot_log.py: MXNet 1.9.1's own logs, every era and trap of
MXNet's log formats, a round trip through our trainer, MXNet's parse_log.py as the oracle."""
import math
import re
import shutil
import subprocess

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

import toolkit.logscan as lp  # the line reader: its fast path
from tests.conftest import REPO
from tests.helpers import invoke_tool, run_tool
from toolkit.benchmarks.oracle import mxnet_tool
from toolkit.errors import UserError
from toolkit.logparse import mxnet_markdown, parse_logs
from toolkit.plots import plot_run

PLOT_LOG = REPO / "tools" / "plot_log.py"
END_RE = re.compile(r"Epoch\[(\d+)\] (?:(Train|Validation)-(\S+?)=([\d.]+)|Time cost=([\d.]+))$", re.M)
BATCH_RE = re.compile(r"Epoch\[(\d+)\] Batch \[(\d+)-(\d+)\]\tSpeed: ([\d.]+) samples/sec\t(.*)$", re.M)


@pytest.fixture(params=[True, False], ids=["table-path", "line-path"])
def fast(request, monkeypatch):
    """Every parse twice: pandas' table reader (forced on for small logs) and the per-line regexes."""
    monkeypatch.setattr(lp, "FAST_MIN_ROWS", 1)
    return request.param


def _ends(*texts):
    """{(epoch, column): value} from the epoch lines of the texts, later lines winning."""
    out = {}
    for text in texts:
        for e, kind, name, value, cost in END_RE.findall(text):
            col = "time-cost" if cost else ("train-" if kind == "Train" else "val-") + name
            out[(int(e), col)] = float(cost or value)
    return out


def _batch_lines(text):
    return [(int(e), int(f), int(last), float(s), {k: float(v) for k, v in
             (kv.split("=") for kv in rest.split("\t"))}) for e, f, last, s, rest in BATCH_RE.findall(text)]


@pytest.mark.parametrize("api", ["module", "feedforward"])
def test_mxnet191_logs_with_resumed_second_file(mxnet191, fast, api):
    files = [mxnet191 / "logs" / f"{api}_training_{k}.log" for k in (0, 2)]
    texts = [f.read_text() for f in files]
    p = parse_logs(files, batches=True, fast=fast)
    assert p.epochs.index.tolist() == [0, 1, 2, 3] and p.api == api
    ends = _ends(*texts)
    assert ends and all(p.epochs.at[e, c] == v for (e, c), v in ends.items())
    rows = [r for t in texts for r in _batch_lines(t)]
    assert len(p.batches) == len(rows) == (12 if api == "module" else 16)
    for (e, f, last, s, metrics), b in zip(rows, p.batches.to_dict("records")):
        assert (b["epoch"], b["first"], b["last"], b["speed"]) == (e, f, last, s)
        assert all(b[k] == v for k, v in metrics.items())
    if api == "feedforward":  # no Train- lines: the epoch's last batch line stands in
        last = {e: m for e, _, _, _, m in rows}
        assert all(p.epochs.at[e, f"train-{k}"] == v for e, m in last.items() for k, v in m.items())
        assert p.epochs.at[1, "train-accuracy"] == 0.16  # "Epoch[1] Batch [15-20] ... accuracy=0.160000"
    else:
        assert p.epochs.at[1, "train-accuracy"] == 0.215  # "Epoch[1] Train-accuracy=0.215000"
    assert p.epochs["speed"].notna().all() and p.epochs["time-cost"].notna().all()
    assert [(r.epoch, r.batch) for r in p.resumes] == [(2, 0)] and f"{api}_training_2.log" in p.resumes[0].source


def _mx_epoch(e, acc, batches=(50, 100), shape="range", prefix="INFO:root:", train=True, val=True):
    """One epoch of an MXNet log in the given Speedometer era."""
    lines, prev = [], 0
    for b in batches:
        head = f"Epoch[{e}] Batch [{prev}-{b}]" if shape == "range" else f"Epoch[{e}] Batch [{b}]"
        if shape == "old":  # MXNet <= 0.9: one line per metric
            lines += [f"{head}\tSpeed: {1000 + b:.2f} samples/sec\tTrain-accuracy={acc:f}",
                      f"{head}\tSpeed: {1000 + b:.2f} samples/sec\tTrain-top_k_accuracy_5={acc + .2:f}"]
        else:
            lines.append(f"{head}\tSpeed: {1000 + b:.2f} samples/sec\taccuracy={acc:f}\t"
                         f"top_k_accuracy_5={acc + .2:f}\tcross-entropy={2 - acc:f}")
        prev = b
    if train:
        lines += [f"Epoch[{e}] Train-accuracy={acc:f}", f"Epoch[{e}] Train-cross-entropy={2 - acc:f}"]
    lines.append(f"Epoch[{e}] Time cost={10 + e:.3f}")
    lines.append(f'Saved checkpoint to "ck/m-{e + 1:04d}.params"')
    if val:
        lines += [f"Epoch[{e}] Validation-accuracy={acc + .1:f}", f"Epoch[{e}] Validation-cross-entropy={1.9 - acc:f}"]
    return [prefix + x for x in lines]


def _write(path, lines, tail=b""):
    path.write_bytes(("\n".join(lines) + "\n").encode() + tail)
    return path


@pytest.mark.parametrize("shape", ["old", "single", "range"])
def test_every_speedometer_era(tmp_path, fast, shape):
    lines = [x for e in range(3) for x in _mx_epoch(e, 0.1 * (e + 1), shape=shape, train=shape != "old")]
    p = parse_logs([_write(tmp_path / "a.log", lines)], batches=True, fast=fast)
    assert p.epochs.index.tolist() == [0, 1, 2]
    assert p.batches[["epoch", "first", "last"]].values.tolist() == [[e, f, b] for e in range(3) for f, b in ((0, 50), (50, 100))]
    assert p.batches["accuracy"].tolist() == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.3, 0.3])
    assert p.batches["top_k_accuracy_5"].tolist() == pytest.approx([0.3, 0.3, 0.4, 0.4, 0.5, 0.5])
    assert p.epochs["train-accuracy"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert p.epochs["val-accuracy"].tolist() == pytest.approx([0.2, 0.3, 0.4])
    assert p.epochs["time-cost"].tolist() == [10, 11, 12] and p.epochs["speed"].tolist() == [1075] * 3
    assert p.api == ("feedforward" if shape == "old" else "module")


def _reference(tmp_path):
    return parse_logs([_write(tmp_path / "ref.log", [x for e in range(4) for x in _mx_epoch(e, 0.1 * (e + 1))])],
                      batches=True, fast=False)


def _same(a, b):
    pd.testing.assert_frame_equal(a.epochs, b.epochs)
    pd.testing.assert_frame_equal(a.batches, b.batches)


def test_prefixes_duplicates_noise_and_several_files(tmp_path, fast):
    prefixes = ["INFO:root:", "2016-01-16 22:03:48,269 Node[0] ", "16/06/2019 06:08:20 PM: INFO: ", "[1,0]<stdout>:", ""]
    lines = ["INFO:root:start with arguments Namespace(batch_size=128, lr=0.1, lr_step_epochs='30,60', "
             "network='resnet', num_epochs=4)", "noise: Epoch[ Batch [1-2] Speed: samples/sec Train-x=1"]
    for e in range(4):
        for i, line in enumerate(_mx_epoch(e, 0.1 * (e + 1), prefix="")):
            lines += [prefixes[(e + i) % 5] + line] * 2  # two handlers: every line twice
    ref = _reference(tmp_path)
    _same(parse_logs([_write(tmp_path / "dup.log", lines, b"\x00\xff\xfe junk Epoch[\n")], batches=True, fast=fast), ref)
    cuts = [0, 9, 30, len(lines)]
    parts = [_write(tmp_path / f"p{k}.log", lines[a:b]) for k, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    p = parse_logs(parts, batches=True, fast=fast)
    _same(p, ref)
    assert [r.source.endswith("next file") for r in p.resumes] == [True, True]


def test_epoch_cut_off_in_the_middle(tmp_path, fast):
    lines = [x for e in range(3) for x in _mx_epoch(e, 0.1 * (e + 1))]
    lines += _mx_epoch(3, 0.4, batches=(50, 100, 150))[:2] + ["INFO:root:Epoch[3] Batch [100-15"]
    p = parse_logs([_write(tmp_path / "cut.log", lines)], batches=True, fast=fast)
    assert p.epochs.index.tolist() == [0, 1, 2, 3]
    assert math.isnan(p.epochs.at[3, "train-accuracy"]) and math.isnan(p.epochs.at[3, "val-accuracy"])
    assert p.epochs.at[3, "speed"] == 1075 and p.batches["epoch"].tolist().count(3) == 2
    # killed during validation: Train- and Time cost logged, Validation- half
    lines = [x for e in range(2) for x in _mx_epoch(e, 0.1 * (e + 1))][:-1]
    p = parse_logs([_write(tmp_path / "val.log", lines)], fast=fast)
    assert p.epochs.at[1, "val-accuracy"] == pytest.approx(0.3) and math.isnan(p.epochs.at[1, "val-cross-entropy"])


def test_restart_replaces_the_epochs_it_logs_again(tmp_path, fast):
    old = [x for e in range(4) for x in _mx_epoch(e, 0.1 * (e + 1))]
    new = ["INFO:root:Update[0]: Change learning rate to 5.00000e-02"] + \
        [x for e in (2, 3) for x in _mx_epoch(e, 0.5 + 0.1 * e)]
    p = parse_logs([_write(tmp_path / "r.log", old + new)], batches=True, fast=fast)
    assert p.epochs.index.tolist() == [0, 1, 2, 3]
    assert p.epochs["train-accuracy"].tolist() == pytest.approx([0.1, 0.2, 0.7, 0.8])
    assert len(p.batches) == 8 and p.batches["accuracy"].tolist()[4:] == pytest.approx([0.7, 0.7, 0.8, 0.8])
    assert [(r.epoch, r.batch, r.lr) for r in p.resumes] == [(2, 0, 0.05)]
    assert "epoch 2 logged again" in p.resumes[0].source
    # a run killed in epoch 3's validation and started again at epoch 3: the same epoch number
    again = old + _mx_epoch(3, 0.9)
    p = parse_logs([_write(tmp_path / "r3.log", again)], batches=True, fast=fast)
    assert p.epochs.at[3, "train-accuracy"] == pytest.approx(0.9) and len(p.batches) == 8
    assert [(r.epoch, r.batch) for r in p.resumes] == [(3, 0)]


def _ours(e, b0, b1, acc):
    return f"2026-11-23 12:59:32,237 Epoch[{e}] Batch [{b0}-{b1}]\tSpeed: 481.81 samples/sec\taccuracy={acc:f}\t" \
           f"top_k_accuracy_5=0.692187\tcross-entropy=2.437003\tdata-time=0.008831\tcompute-time=0.057585"


def test_our_marker_lr_lines_and_mid_epoch_resume(tmp_path, fast):
    ts = "2026-11-23 12:59:32,237 "
    lines = [ts + "config {...}", ts + "Update[0]: Change learning rate to 1.00000e-01",
             _ours(0, 0, 20, .1), _ours(0, 20, 40, .1), _ours(0, 40, 60, .1), _ours(0, 60, 62, .1),
             ts + "Epoch[0] Train-accuracy=0.100000", ts + "Epoch[0] Time cost=38.561",
             ts + 'Saved checkpoint to "ck/s-0001.pt"', ts + "Epoch[0] Validation-accuracy=0.200000",
             _ours(1, 0, 20, .2), _ours(1, 20, 40, .2), ts + "Update[102]: Change learning rate to 1.00000e-02",
             _ours(1, 40, 60, .2), ts + 'Stopped at Epoch[1] Batch [50]: Saved checkpoint to "ck/s-0001-0050.pt"',
             ts + 'Resumed training from "ck/s-0001-0050.pt" at Epoch[1] Batch [50] with lr=1.00000e-03',
             _ours(1, 50, 60, .3), _ours(1, 60, 62, .3), ts + "Epoch[1] Train-accuracy=0.300000",
             ts + "Epoch[1] Time cost=9.000", ts + "Epoch[1] Validation-accuracy=0.400000"]
    p = parse_logs([_write(tmp_path / "s.log", lines)], batches=True, fast=fast)
    assert p.batches[["epoch", "first", "last"]].values.tolist()[4:] == [[1, 0, 20], [1, 20, 40], [1, 50, 60], [1, 60, 62]]
    assert p.batches["data-time"].tolist() == [0.008831] * 8
    assert p.epochs["lr"].tolist() == [0.1, 0.001] and p.epochs["train-accuracy"].tolist() == [0.1, 0.3]
    assert p.lr_changes == pytest.approx([1 + 40 / 62, 1 + 50 / 62])
    assert [(r.epoch, r.batch, r.lr) for r in p.resumes] == [(1, 50, 0.001)]
    assert "ck/s-0001-0050.pt" in p.resumes[0].source


def test_table_path_falls_back_line_by_line(tmp_path, monkeypatch):
    """Lines of another shape (nan, a negative value, top_k_accuracy_3, an extra metric) amid many
    regular ones: same result as the per-line path."""
    rng = np.random.default_rng(0)
    lines = []
    for e in range(6):
        for b in range(0, 500, 10):
            m = f"accuracy={rng.random():f}\ttop_k_accuracy_5={rng.random():f}"
            m = {(1, 50): "accuracy=nan\ttop_k_accuracy_5=0.5", (2, 70): "accuracy=-0.5\ttop_k_accuracy_5=0.5",
                 (3, 90): "accuracy=0.5\ttop_k_accuracy_3=0.5", (4, 10): m + "\tlr=0.1"}.get((e, b), m)
            lines.append(f"INFO:root:Epoch[{e}] Batch [{b}-{b + 10}]\tSpeed: {rng.random() * 1e4:.2f} samples/sec\t{m}")
        lines += [f"INFO:root:Epoch[{e}] Train-accuracy={rng.random():f}", f"INFO:root:Epoch[{e}] Time cost=1.5"]
    path = _write(tmp_path / "odd.log", lines)
    a, b = parse_logs([path], batches=True), parse_logs([path], batches=True, fast=False)
    _same(a, b)
    assert math.isnan(a.batches["accuracy"][50 + 5]) and a.batches["accuracy"][100 + 7] == -0.5
    assert a.batches["top_k_accuracy_3"].notna().sum() == 1 and a.batches["lr"].notna().sum() == 1


@pytest.mark.parametrize("content", [None, "", "INFO:root:no epochs here\n", "\x89PNG\r\n\x1a\n\x00\x00"])
def test_user_errors_name_the_file(tmp_path, content):
    path = tmp_path / "x.log"
    if content is not None:
        path.write_bytes(content.encode("latin-1"))
    with pytest.raises(UserError, match=re.escape(str(path))):
        parse_logs([path])
    with pytest.raises(UserError, match="cannot read"):
        parse_logs([tmp_path])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Our trainer for 2 epochs (the LR drops at epoch 1), then resumed from epoch 1 at a new LR."""
    d = tmp_path_factory.mktemp("run")
    common = ["--logs-dir", d / "logs", "--checkpoints-dir", d / "ck", "--prefix", "s", "--epochs", "2",
              "--batch-size", "64", "--log-every", "10"]
    invoke_tool("tools/train.py", "--recipe", "resnet18", "--width", "0.25", "--image-size", "32",
                "--min-crop-scale", "0.35", "--lr-step-epochs", "1", *common)  # in this process
    shutil.copy(d / "logs" / "s.log", d / "first.log")
    invoke_tool("tools/resume.py", "--epoch", "1", "--lr", "0.003", *common)
    return d


def test_round_trip_through_our_trainer(run):
    first, full = (run / "first.log").read_text(), (run / "logs" / "s.log").read_text()
    p = parse_logs([run / "logs" / "s.log"], batches=True)
    printed = {}  # (epoch, column) -> the text of its last line: the resumed run re-logs Epoch[1]
    for e, kind, name, value, cost in re.findall(r"Epoch\[(\d+)\] (?:(Train|Validation)-(\S+?)=(\S+)|"
                                                 r"Time cost=(\S+))$", full, re.M):
        printed[(int(e), "time-cost" if cost else ("train-" if kind == "Train" else "val-") + name)] = cost or value
    assert {e for e, _ in printed} == set(p.epochs.index) == {0, 1} and len(printed) == 14
    for (e, col), text in printed.items():  # to printed precision: %f, %.3f for the time
        assert (f"{p.epochs.at[e, col]:.3f}" if col == "time-cost" else f"{p.epochs.at[e, col]:f}") == text
    before, after = full.split("Resumed training from")
    rows = [r for r in _batch_lines(before) if r[0] == 0] + _batch_lines(after)
    assert len(p.batches) == len(rows) == len(_batch_lines(first)) and len(rows) > 4
    for (e, f, last, s, m), b in zip(rows, p.batches.to_dict("records")):
        assert (b["epoch"], b["first"], b["last"], b["speed"]) == (e, f, last, s)
        assert all(b[k] == v for k, v in m.items())
    assert p.epochs["lr"].tolist() == [0.1, 0.003] and p.lr_changes == [1.0]
    assert [(r.epoch, r.batch, r.lr) for r in p.resumes] == [(1, 0, 0.003)]
    q = parse_logs([run / "first.log"])  # the first run alone: its LR drop at epoch 1
    assert q.epochs["lr"].tolist() == [0.1, 0.01] and q.lr_changes == [1.0] and not q.resumes


def test_cli_table_csv_and_png(run, tmp_path):
    out = run_tool(PLOT_LOG, run / "logs" / "s.log", "--csv", tmp_path / "e.csv", "--batches")
    png = run / "logs" / "s.png"
    assert f"PNG: {png}" in out.stderr and "resumed at Epoch[1] Batch [0]" in out.stderr
    p = parse_logs([run / "logs" / "s.log"], batches=True)
    assert p.epochs.to_string() in out.stdout
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "e.csv", index_col="epoch"), p.epochs)
    assert len(pd.read_csv(tmp_path / "e-batches.csv")) == len(p.batches)
    img = mpimg.imread(png)
    assert png.stat().st_size > 20_000 and img.shape[:2] == (500, 1200)
    gray = img[..., :3].mean(axis=2)
    assert gray.std() > 0.05 and (gray < 0.95).mean() > 0.02  # lines, text and markers, not blank


def test_plot_run_without_validation_or_top5(tmp_path):
    lines = [x for e in range(3) for x in _mx_epoch(e, 0.1 * (e + 1), val=False)]
    parsed = parse_logs([_write(tmp_path / "a.log", lines)])
    out = plot_run(parsed, str(tmp_path / "a.png"), title="no validation")
    assert mpimg.imread(out).shape[:2] == (500, 1200) and not list(tmp_path.glob(".a.png.tmp-*"))


@pytest.mark.oracle
def test_markdown_equals_mxnet_parse_log(run, mxnet191, mxnet_python, tmp_path):
    mx_tool = mxnet_tool(mxnet_python, "parse_log.py")
    for log in (run / "first.log", mxnet191 / "logs" / "module_training_0.log", mxnet191 / "logs" / "module_training_2.log"):
        theirs = subprocess.run([mxnet_python, mx_tool, str(log)], capture_output=True, text=True, check=True).stdout
        ours = invoke_tool(PLOT_LOG, log, "--format", "markdown", "--out", tmp_path / "x.png").stdout
        assert ours == theirs and theirs.count("\n") >= 4
        assert mxnet_markdown(parse_logs([log]).epochs) + "\n" == theirs


@pytest.mark.parametrize("args", [["missing.log"], ["."], ["empty.log"], ["s.log", "--out", "no/such/dir/x.png"]])
def test_cli_user_errors_exit_2_with_one_line(tmp_path, run, args):
    (tmp_path / "empty.log").write_text("")
    shutil.copy(run / "first.log", tmp_path / "s.log")
    proc = invoke_tool(PLOT_LOG, *args, check=False, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_dotted_words_and_marker_only_logs(tmp_path, monkeypatch):
    """A metric name with a dot in many regular lines: the table path steps aside instead of failing.
    A log with nothing but a resume marker: one UserError."""
    from toolkit import mxlog
    rows = [f"INFO:root:Epoch[0] Batch [{b}-{b + 10}]\tSpeed: 100.00 samples/sec\ta.b=0.5" for b in range(0, 3000, 10)]
    path = _write(tmp_path / "dots.log", rows + ["INFO:root:Epoch[0] Time cost=1.0"])
    monkeypatch.setattr(lp, "FAST_MIN_ROWS", 1)
    a, b = parse_logs([path], batches=True), parse_logs([path], batches=True, fast=False)
    _same(a, b)
    assert len(a.batches) == 300 and (a.batches["a.b"] == 0.5).all()
    marker = _write(tmp_path / "marker.log", ["INFO:root:" + mxlog.resume_line("x-0001.pt", 1, 0, 0.1)])
    with pytest.raises(UserError, match="only resume markers"):
        parse_logs([marker])
