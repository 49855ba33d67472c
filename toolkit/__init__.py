"""Offline toolkits on top of the pipeline library (``shared``): what engineers run beside the stream.

- :mod:`toolkit.litho`: layouts, the lithography simulator, data sets and layout import;
- :mod:`toolkit.training`: encoder training (objectives, augmentation, data, the train command);
- :mod:`toolkit.calibration`: thresholds from data (ROC, F1, per-cluster, conformal gates);
- :mod:`toolkit.evaluation`: what the embeddings mean (retrieval, novelty, clusters, transfer).

A toolkit imports ``shared`` and other toolkits, never a service or an application module.
"""
