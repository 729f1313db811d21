"""ILSVRC-2012 from its downloads: the devkit (devkit.py), the three routes to the images
(sources.py: the tar files, unpacked folders, Kaggle's layout), resumable packing (prepare.py) and
the check of a prepared set (check.py)."""
