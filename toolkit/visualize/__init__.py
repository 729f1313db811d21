"""Look inside a trained network (tools/visualize.py): one module per question.

    run.py       a checkpoint of any recipe -> model, eval preprocessing, class names; batched predictions
    images.py    the images to show: files, folders, .lst lists or records of a split; toy boxes
    figures.py   grids of images and heatmaps (matplotlib, Agg), written atomically; CSVs beside
    mistakes.py  errors (most confident mistakes and hits) and the confusion matrix
    heatmaps.py  CAM / Grad-CAM (captum) and occlusion (captum); heat inside the toy shapes' boxes
    layers.py    layer names and the feature maps of chosen layers (forward hooks)
    filters.py   first-layer kernels and activation maximization (hand-written; see there why)
    augment.py   the training transform drawn several times, as the torch loader draws it
"""
