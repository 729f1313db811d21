"""Using a trained model: predict on image files (predict), export to ONNX and torch.export
(export), ensembles of runs (ensemble) and weight averaging of a run's last epochs (average).

The checkpoint describes itself (meta): class names, mean/std, input size and eval resize, so
none of these need the dataset folder.
"""
