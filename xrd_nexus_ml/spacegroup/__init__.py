"""Space-group, extinction-group and crystal-system classification of powder patterns.

`negatives`: patterns that are not crystal diffractograms (flat, noise, amorphous humps),
shown to the network so it learns to be unsure of them; `model`: the trained ResNet bundle, its
calibrated predictions and `predict_patterns` for measured files. Training lives in
`training.spacegroup`, scoring in `xrd_nexus_ml.evaluation.spacegroup`.
"""
