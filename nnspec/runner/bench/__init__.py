"""Old name of :mod:`nnspec.bench` (see :mod:`nnspec.runner`)."""
