"""``python -m mmtrain.data.demo --root data/spoken_digits --seed 0 --size small``."""

import sys

from mmtrain.data.demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
