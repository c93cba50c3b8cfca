"""``python -m benchmarks``: the same as ``mmkit bench``."""

import sys

from mmkit.bench import main

sys.exit(main())
