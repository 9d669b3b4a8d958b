"""``python -m nnspec.runner.study``: the 0.1 name of ``python -m nnspec.bench.study``."""

if __name__ == "__main__":
    import sys

    from nnspec.bench.study import main
    from nnspec.runner import moved

    moved("nnspec.runner.study", "nnspec.bench.study")
    sys.exit(main())
