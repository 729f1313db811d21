"""Make MXNet 1.9.1 model files and MXNet's own outputs for the importer's tests (run in the oracle).

    $MXNET_PYTHON tests/data/mxnet191/gen_models.py OUT_DIR NAME[,NAME...] [--size N] [--batch B]

NAME is a Gluon model zoo network (random weights, hybridized, net.export: plain parameter names),
`mod_resnet18` / `mod_alexnet` / `mod_inception_bn` (symbols as MXNet's example/image-classification
writes them, saved by mx.model.save_checkpoint: arg:/aux: keys), `legacy_resnet18` (mod_resnet18's
symbol rewritten with the keys of MXNet < 0.9: `param`, no aux variables, no version; MXNet 1.9.1
loads it and must give the same output), `ops` (one small graph per operator and option the importer takes), or `params_cases` (.params files of every dtype and
layout, the hand-written pre-magic and V1 layouts checked by mx.nd.load).
Per model: NAME-symbol.json, NAME-0000.params, NAME-input.npy, NAME-logits.npy (the input of the
softmax head, computed by MXNet from the files just written). Deterministic (fixed seeds).
"""
import json
import os
import struct
import sys
import time

import mxnet as mx
import numpy as np


def randomize(params, seed):
    """Weights as MSRA/He would draw them, BatchNorm's gamma/beta/statistics random too."""
    rng = np.random.RandomState(seed)
    for name, p in sorted(params.items()):
        shape = p.shape
        if name.endswith(("gamma", "running_var", "moving_var")):
            v = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("beta", "running_mean", "moving_mean", "bias")):
            v = rng.normal(0, 0.1, shape)
        elif name.endswith("alpha"):
            v = rng.uniform(0.1, 0.3, shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            v = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        p.set_data(mx.nd.array(v.astype(np.float32)))


def gluon(name, out, size, batch):
    net = mx.gluon.model_zoo.vision.get_model(name, pretrained=False)
    net.initialize(mx.init.Zero())
    net.hybridize()
    x = np.random.RandomState(1).uniform(-2, 2, (batch, 3, size, size)).astype(np.float32)
    net(mx.nd.array(x))
    randomize(net.collect_params(), 0)
    net(mx.nd.array(x))
    net.export(os.path.join(out, name), 0)
    return x


def conv_bn(data, name, nf, k, s, p, eps=2e-5):
    c = mx.sym.Convolution(data, num_filter=nf, kernel=(k, k), stride=(s, s), pad=(p, p), no_bias=True, name=name)
    return mx.sym.BatchNorm(c, fix_gamma=False, eps=eps, momentum=0.9, name=name + "_bn")


def resnet_symbol(units=(2, 2, 2, 2), filters=(4, 4, 8, 16, 32), classes=10):
    """example/image-classification/symbols/resnet.py's pre-activation ResNet (basic blocks; an
    sixteenth of its widths, to keep the files small)."""
    data = mx.sym.Variable("data")
    body = mx.sym.BatchNorm(data, fix_gamma=True, eps=2e-5, momentum=0.9, name="bn_data")
    body = mx.sym.Convolution(body, num_filter=filters[0], kernel=(7, 7), stride=(2, 2), pad=(3, 3),
                              no_bias=True, name="conv0")
    body = mx.sym.BatchNorm(body, fix_gamma=False, eps=2e-5, momentum=0.9, name="bn0")
    body = mx.sym.Activation(body, act_type="relu", name="relu0")
    body = mx.sym.Pooling(body, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max")
    for i, n in enumerate(units):
        for j in range(n):
            stride = 1 if i == 0 or j > 0 else 2
            name = f"stage{i + 1}_unit{j + 1}"
            bn1 = mx.sym.BatchNorm(body, fix_gamma=False, eps=2e-5, momentum=0.9, name=name + "_bn1")
            act1 = mx.sym.Activation(bn1, act_type="relu", name=name + "_relu1")
            conv1 = mx.sym.Convolution(act1, num_filter=filters[i + 1], kernel=(3, 3), stride=(stride, stride),
                                       pad=(1, 1), no_bias=True, name=name + "_conv1")
            bn2 = mx.sym.BatchNorm(conv1, fix_gamma=False, eps=2e-5, momentum=0.9, name=name + "_bn2")
            act2 = mx.sym.Activation(bn2, act_type="relu", name=name + "_relu2")
            conv2 = mx.sym.Convolution(act2, num_filter=filters[i + 1], kernel=(3, 3), stride=(1, 1),
                                       pad=(1, 1), no_bias=True, name=name + "_conv2")
            short = body if j > 0 or filters[i] == filters[i + 1] and stride == 1 else mx.sym.Convolution(
                act1, num_filter=filters[i + 1], kernel=(1, 1), stride=(stride, stride), no_bias=True, name=name + "_sc")
            body = conv2 + short
    bn1 = mx.sym.BatchNorm(body, fix_gamma=False, eps=2e-5, momentum=0.9, name="bn1")
    relu1 = mx.sym.Activation(bn1, act_type="relu", name="relu1")
    pool1 = mx.sym.Pooling(relu1, global_pool=True, kernel=(7, 7), pool_type="avg", name="pool1")
    flat = mx.sym.Flatten(pool1)
    fc1 = mx.sym.FullyConnected(flat, num_hidden=classes, name="fc1")
    return mx.sym.SoftmaxOutput(fc1, name="softmax")


def alexnet_symbol(classes=10):
    """example/image-classification/symbols/alexnet.py (LRN after the first two convolutions; a
    quarter of its widths)."""
    data = mx.sym.Variable("data")
    c1 = mx.sym.Convolution(data, kernel=(11, 11), stride=(4, 4), num_filter=24, name="conv1")
    r1 = mx.sym.Activation(c1, act_type="relu", name="relu1")
    l1 = mx.sym.LRN(r1, alpha=0.0001, beta=0.75, knorm=2, nsize=5, name="lrn1")
    p1 = mx.sym.Pooling(l1, pool_type="max", kernel=(3, 3), stride=(2, 2), name="pool1")
    c2 = mx.sym.Convolution(p1, kernel=(5, 5), pad=(2, 2), num_filter=64, name="conv2")
    r2 = mx.sym.Activation(c2, act_type="relu", name="relu2")
    l2 = mx.sym.LRN(r2, alpha=0.0001, beta=0.75, knorm=2, nsize=5, name="lrn2")
    p2 = mx.sym.Pooling(l2, kernel=(3, 3), stride=(2, 2), pool_type="max", name="pool2")
    c3 = mx.sym.Convolution(p2, kernel=(3, 3), pad=(1, 1), num_filter=96, name="conv3")
    r3 = mx.sym.Activation(c3, act_type="relu", name="relu3")
    p3 = mx.sym.Pooling(r3, kernel=(3, 3), stride=(2, 2), pool_type="max", name="pool3")
    flat = mx.sym.Flatten(p3)
    fc1 = mx.sym.FullyConnected(flat, num_hidden=128, name="fc1")
    r4 = mx.sym.Activation(fc1, act_type="relu", name="relu4")
    d1 = mx.sym.Dropout(r4, p=0.5, name="dropout1")
    fc3 = mx.sym.FullyConnected(d1, num_hidden=classes, name="fc3")
    return mx.sym.SoftmaxOutput(fc3, name="softmax")


def inception_bn_symbol(classes=10):
    """A short Inception-BN (example/image-classification/symbols/inception-bn.py's factories:
    ConvFactory with BatchNorm's default eps 1e-3 and fix_gamma, InceptionFactoryA/B; one pooling
    with pooling_convention full)."""
    def conv(data, nf, k=1, s=1, p=0, name=""):
        c = mx.sym.Convolution(data, num_filter=nf, kernel=(k, k), stride=(s, s), pad=(p, p), name="conv_" + name)
        bn = mx.sym.BatchNorm(c, fix_gamma=True, name="bn_" + name)
        return mx.sym.Activation(bn, act_type="relu", name="relu_" + name)

    def fac_a(data, name):
        c1 = conv(data, 16, name=name + "_1x1")
        c3 = conv(conv(data, 16, name=name + "_3x3_reduce"), 24, 3, p=1, name=name + "_3x3")
        pool = mx.sym.Pooling(data, kernel=(3, 3), stride=(1, 1), pad=(1, 1), pool_type="avg", name="avg_pool_" + name)
        proj = conv(pool, 8, name=name + "_proj")
        return mx.sym.Concat(c1, c3, proj, name="ch_concat_" + name)

    def fac_b(data, name):
        c3 = conv(conv(data, 32, name=name + "_3x3_reduce"), 40, 3, 2, 1, name=name + "_3x3")
        pool = mx.sym.Pooling(data, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max",
                              name="max_pool_" + name)
        return mx.sym.Concat(c3, pool, name="ch_concat_" + name)

    data = mx.sym.Variable("data")
    body = conv(data, 32, 7, 2, 3, name="1")
    body = mx.sym.Pooling(body, kernel=(3, 3), stride=(2, 2), pool_type="max", pooling_convention="full", name="pool_1")
    body = fac_b(fac_a(fac_a(body, "3a"), "3b"), "3c")
    body = mx.sym.Pooling(body, kernel=(7, 7), stride=(1, 1), global_pool=True, pool_type="avg", name="global_pool")
    fc1 = mx.sym.FullyConnected(mx.sym.Flatten(body), num_hidden=classes, name="fc1")
    return mx.sym.SoftmaxOutput(fc1, name="softmax")


def module(name, out, size, batch, prefix=None):
    sym = {"mod_resnet18": resnet_symbol, "mod_alexnet": alexnet_symbol,
           "mod_inception_bn": inception_bn_symbol}[name]()
    shapes, _, aux_shapes = sym.infer_shape(data=(batch, 3, size, size))
    args = {n: mx.nd.zeros(s) for n, s in zip(sym.list_arguments(), shapes) if n not in ("data", "softmax_label")}
    aux = {n: mx.nd.zeros(s) for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    holders = {n: _Holder(v) for n, v in {**args, **aux}.items()}
    randomize(holders, 0)
    mx.model.save_checkpoint(os.path.join(out, prefix or name), 0, sym, {n: holders[n].data for n in args},
                             {n: holders[n].data for n in aux})
    low = 0 if name == "mod_resnet18" else -2  # bn_data takes raw 0-255 pixels
    return np.random.RandomState(1).uniform(low, 255 if low == 0 else 2, (batch, 3, size, size)).astype(np.float32)


class _Holder:
    def __init__(self, arr):
        self.data, self.shape = arr, arr.shape

    def set_data(self, v):
        self.data = v


def legacy(out, size, batch):
    """mod_resnet18's files, its symbol in MXNet 0.8's keys (what MXNet's upgrader reads)."""
    x = module("mod_resnet18", out, size, batch, "legacy_resnet18")
    doc = json.load(open(os.path.join(out, "legacy_resnet18-symbol.json")))
    nodes = doc["nodes"]
    aux = {i for i, n in enumerate(nodes) if n["op"] == "null" and n["name"].endswith(("moving_mean", "moving_var"))}
    where, kept = {}, []
    for i, n in enumerate(nodes):
        if i in aux:
            continue
        where[i] = len(kept)
        n = dict(n)
        if "attrs" in n:
            n["param"] = n.pop("attrs")
        n["inputs"] = [[where[e[0]], e[1]] for e in n["inputs"] if e[0] not in aux]
        kept.append(n)
    legacy_doc = {"nodes": kept, "arg_nodes": [where[i] for i in doc["arg_nodes"] if i not in aux],
                  "heads": [[where[h[0]], h[1]] for h in doc["heads"]]}
    with open(os.path.join(out, "legacy_resnet18-symbol.json"), "w") as f:
        json.dump(legacy_doc, f)
    return x


def logits(prefix, x):
    """MXNet's forward from the files: the output feeding the softmax head."""
    sym, args, aux = mx.model.load_checkpoint(prefix, 0)
    doc = json.loads(sym.tojson())
    node = doc["nodes"][doc["heads"][0][0]]
    if node["op"] == "SoftmaxOutput":
        node = doc["nodes"][node["inputs"][0][0]]
    target = sym.get_internals()[node["name"] + "_output"]
    mod = mx.mod.Module(target, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", x.shape)], for_training=False)
    mod.set_params({k: v for k, v in args.items() if k in target.list_arguments()}, aux, allow_missing=False)
    mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
    return mod.get_outputs()[0].asnumpy(), target.name


def params_cases(out):
    """Every dtype and key layout, plus the pre-magic and V1 array layouts written by hand."""
    rng = np.random.RandomState(3)
    arrays = {"arg:w32": rng.randn(2, 3).astype(np.float32), "arg:w64": rng.randn(4).astype(np.float64),
              "aux:w16": rng.randn(2, 2).astype(np.float16), "arg:i32": np.arange(5, dtype=np.int32),
              "arg:u8": np.arange(7, dtype=np.uint8), "arg:i64": np.arange(3, dtype=np.int64) - 1,
              "arg:i8": np.arange(4, dtype=np.int8) - 2, "w4d": rng.randn(2, 1, 3, 3).astype(np.float32)}
    mx.nd.save(os.path.join(out, "cases.params"), {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})
    mx.nd.save(os.path.join(out, "unnamed.params"), [mx.nd.array(arrays["arg:w32"])])
    flags = {np.float32: 0, np.float64: 1, np.float16: 2}
    for layout in ("premagic", "v1"):
        body = b""
        for v in (arrays["arg:w32"], arrays["arg:w64"], arrays["aux:w16"]):
            if layout == "premagic":
                head = struct.pack("<I", v.ndim) + struct.pack(f"<{v.ndim}I", *v.shape)
            else:
                head = struct.pack("<II", 0xF993FAC8, v.ndim) + struct.pack(f"<{v.ndim}q", *v.shape)
            body += head + struct.pack("<iii", 1, 0, flags[v.dtype.type]) + v.tobytes()
        names = b"".join(struct.pack("<Q", len(n)) + n.encode() for n in ("a", "b", "c"))
        with open(os.path.join(out, f"{layout}.params"), "wb") as f:
            f.write(struct.pack("<QQQ", 0x112, 0, 3) + body + struct.pack("<Q", 3) + names)
        back = mx.nd.load(os.path.join(out, f"{layout}.params"))  # MXNet reads what we wrote by hand
        for key, v in zip("abc", (arrays["arg:w32"], arrays["arg:w64"], arrays["aux:w16"])):
            assert back[key].dtype == v.dtype and np.array_equal(back[key].asnumpy(), v), (layout, key)
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({k: {"dtype": str(v.dtype), "shape": list(v.shape), "values": v.ravel().tolist()}
                   for k, v in arrays.items()}, f)


def op_cases():
    """name -> (symbol of data -> one operator, input shape): every operator and option the importer
    takes, as a small graph each (weights as mx.sym.Variable, drawn by randomize)."""
    d = mx.sym.Variable("data")
    v = mx.sym.Variable
    pool = lambda name, **kw: (mx.sym.Pooling(d, name=name, **kw), (2, 3, 9, 10))  # noqa: E731
    return {
        "conv_group_dilate": (mx.sym.Convolution(d, num_filter=6, kernel=(3, 3), dilate=(2, 2), pad=(2, 1),
                                                 stride=(2, 1), num_group=3, name="c"), (2, 3 * 2, 9, 8)),
        "conv_no_bias": (mx.sym.Convolution(d, num_filter=4, kernel=(1, 3), no_bias=True, name="c"), (2, 3, 5, 6)),
        "bn_default": (mx.sym.BatchNorm(d, name="b"), (2, 3, 4, 4)),  # eps 1e-3, fix_gamma True
        "bn_eps_free_gamma": (mx.sym.BatchNorm(d, eps=2e-5, fix_gamma=False, name="b"), (2, 3, 4, 4)),
        "bn_global_stats": (mx.sym.BatchNorm(d, use_global_stats=True, fix_gamma=False, name="b"), (2, 3, 4, 4)),
        "act_kinds": (mx.sym.Concat(*[mx.sym.Activation(d, act_type=a) for a in
                                      ("relu", "sigmoid", "tanh", "softrelu", "softsign")], dim=1), (2, 3, 4, 4)),
        "leaky_kinds": (mx.sym.Concat(mx.sym.LeakyReLU(d, act_type="leaky", slope=0.1),
                                      mx.sym.LeakyReLU(d, act_type="elu", slope=0.7), mx.sym.LeakyReLU(d, act_type="selu"),
                                      mx.sym.LeakyReLU(d, act_type="gelu"), mx.sym.LeakyReLU(d),
                                      mx.sym.LeakyReLU(d, act_type="prelu", gamma=v("p_alpha"), name="p"),
                                      dim=1), (2, 3, 4, 4)),
        "pool_max_full_pad": pool("p", kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max",
                                  pooling_convention="full"),
        "pool_avg_full_pad": pool("p", kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="avg",
                                  pooling_convention="full"),
        "pool_avg_full_exclude": pool("p", kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="avg",
                                      pooling_convention="full", count_include_pad=False),
        "pool_avg_big_pad": pool("p", kernel=(2, 2), stride=(3, 3), pad=(1, 1), pool_type="avg"),
        "pool_max_ceil_edge": pool("p", kernel=(1, 1), stride=(4, 4), pool_type="max", pooling_convention="full"),
        "pool_sum_valid": pool("p", kernel=(3, 2), stride=(1, 2), pool_type="sum"),
        "pool_global_max": pool("p", kernel=(1, 1), global_pool=True, pool_type="max"),
        "lrn": (mx.sym.LRN(d, nsize=3, alpha=0.3, beta=0.6, knorm=1.5), (2, 5, 4, 4)),
        "fc_flatten": (mx.sym.FullyConnected(d, num_hidden=5, name="f"), (2, 3, 2, 2)),
        "fc_no_flatten_no_bias": (mx.sym.FullyConnected(d, num_hidden=5, flatten=False, no_bias=True, name="f"),
                                  (2, 3, 4)),
        "scalars_clip_sigmoid": (mx.sym.sigmoid(mx.sym.clip(((d - 0.5) * 2.0 / 4.0 + 1.0), -0.3, 0.4))
                                 + mx.sym.relu(1.0 - d) + 2.0 / (mx.sym.abs(d) + 1), (2, 3, 4, 4)),
        "broadcast_ops": (mx.sym.broadcast_add(d, v("bias_const", shape=(1, 3, 1, 1))) * mx.sym.broadcast_mul(d, v("scale_const", shape=(1, 1, 4, 1)))
                          - mx.sym.elemwise_add(d, d), (2, 3, 4, 4)),
        "reshape_codes": (mx.sym.Reshape(mx.sym.Reshape(mx.sym.Reshape(mx.sym.Reshape(
            d, shape=(0, -4, 3, -1, -3)), shape=(-3, -2)), shape=(-1, 0), reverse=True), shape=(2, -1)),
            (2, 6, 4, 5)),
        "reshape_flatten_concat_dropout": (mx.sym.Concat(mx.sym.Reshape(d, shape=(0, -1)),
                                                         mx.sym.Dropout(mx.sym.Flatten(d), p=0.3), dim=1),
                                           (2, 3, 4, 4)),
    }


def ops(out):
    """Each operator case: NAME-symbol.json, NAME-0000.params (Module keys), input and MXNet's output."""
    for name, (sym, shape) in op_cases().items():
        shapes, _, aux_shapes = sym.infer_shape(data=shape)
        args = {n: _Holder(mx.nd.zeros(s)) for n, s in zip(sym.list_arguments(), shapes) if n != "data"}
        aux = {n: _Holder(mx.nd.zeros(s)) for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
        randomize({**args, **aux}, 5)
        prefix = os.path.join(out, name)
        mx.model.save_checkpoint(prefix, 0, sym, {n: h.data for n, h in args.items()},
                                 {n: h.data for n, h in aux.items()})
        x = np.random.RandomState(2).uniform(-3, 3, shape).astype(np.float32)
        y, _ = logits(prefix, x)
        np.save(prefix + "-input.npy", x)
        np.save(prefix + "-logits.npy", y)


def main():
    out, names = sys.argv[1], sys.argv[2].split(",")
    size = int(sys.argv[sys.argv.index("--size") + 1]) if "--size" in sys.argv else 224
    batch = int(sys.argv[sys.argv.index("--batch") + 1]) if "--batch" in sys.argv else 2
    os.makedirs(out, exist_ok=True)
    for name in names:
        if name in ("params_cases", "ops"):
            {"params_cases": params_cases, "ops": ops}[name](out)
            continue
        start = time.time()
        if name.startswith("mod_"):
            x = module(name, out, size, batch)
        elif name.startswith("legacy_"):
            x = legacy(out, size, batch)
        else:
            x = gluon(name, out, size, batch)
        y, head = logits(os.path.join(out, name), x)
        np.save(os.path.join(out, name + "-input.npy"), x)
        np.save(os.path.join(out, name + "-logits.npy"), y)
        print(name, y.shape, f"{time.time() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
