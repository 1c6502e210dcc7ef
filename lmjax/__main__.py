import sys

from lmjax.cli import main

if __name__ == "__main__":  # not when Grain's worker processes import this module
  sys.exit(main())
