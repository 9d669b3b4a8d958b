"""Data: a spec's dataset name turned into training-ready tensors.

* :mod:`.datasets` - ``load_dataset`` (mnist, fashion_mnist, npz, synthetic) and ``prepare``
  (scaling, normalization, the train/val/test split);
* :mod:`.idx`      - the MNIST-family IDX files: search path, verification, checksum-verified download;
* :mod:`.augment`  - batched augmentations that run on the training device;
* :mod:`.errors`   - ``DataError``, the one exception, worded to be printed as-is.

Independent of the rest of nnspec (no pydantic, no spec types), so the data path can be tested
and reused on its own.
"""
