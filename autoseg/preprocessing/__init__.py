"""Preprocessing: transpose, crop to the nonzero region, normalise, resample, store; and the way back.

Numpy / scipy only (no torch). Axis order is ``(C, z, y, x)`` for images and ``(z, y, x)`` for label maps, spacing in
mm in the same axis order. :func:`~autoseg.preprocessing.case.preprocess_case` is the pure per-case transform,
:mod:`~autoseg.preprocessing.store` the on-disk case store and :func:`~autoseg.preprocessing.run.preprocess_dataset`
the parallel, restartable run over a dataset.
"""
