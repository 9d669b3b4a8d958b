"""``python -m nnspec.runner.overhead``: the 0.1 name of ``python -m nnspec.bench.overhead``."""

if __name__ == "__main__":
    import sys

    from nnspec.bench.overhead import main
    from nnspec.runner import moved

    moved("nnspec.runner.overhead", "nnspec.bench.overhead")
    sys.exit(main())
