"""`python -m xrd_nexus_ml.cli` (e.g. under torchrun): the same as `xrd-nexus-ml`."""

import sys

from xrd_nexus_ml.cli.main import main

sys.exit(main())
