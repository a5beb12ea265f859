"""``python -m mmtrain``: the ``mmtrain`` command."""

import sys

from mmtrain.app.cli import main

sys.exit(main())
