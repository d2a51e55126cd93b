"""Space-group, extinction-group and crystal-system classification of powder patterns.

`negatives`: patterns that are not crystal diffractograms (flat, noise, amorphous humps),
shown to the network so it learns to be unsure of them; `model`: the trained ResNet bundle and
its calibrated predictions; `evaluation`: real structures and measured folders to score it;
`commands`: the `train spacegroup`, `evaluate spacegroup` and `classify` entry points.
"""
