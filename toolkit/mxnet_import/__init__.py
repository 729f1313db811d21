"""Bring MXNet models over: PREFIX-symbol.json + PREFIX-NNNN.params -> one of our checkpoints.

params.py reads .params, symbol.py symbol JSON, convert.py pairs them into the graph as data,
graph.py runs it (GraphNet, an interpreter over one module per node: ops.py, pooling.py),
importer.py makes the checkpoint every tool takes (tools/import_mxnet.py writes it).
"""
