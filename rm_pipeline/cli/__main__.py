"""`python -m rm_pipeline.cli`, as the `rm-pipeline` console script."""

import sys

from rm_pipeline.cli import main

sys.exit(main())
