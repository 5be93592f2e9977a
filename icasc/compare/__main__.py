"""``python -m icasc.compare``: see :mod:`icasc.compare`."""

from icasc.compare.cli import main

if __name__ == "__main__":
    main()
