"""``python -m camlens.cli``: the ``camlens`` command."""

from camlens.cli import main

if __name__ == "__main__":
    main()
