"""Encoder training: objectives, augmentation, training data, the loop and its command.

The encoder itself (architecture, preprocessing, checkpoints) is in :mod:`shared.model`,
which the embed service loads at run time; this package only makes checkpoints.
"""
