"""``python -m kdjax.record render|check|add``."""

import sys

from kdjax.record.commands import main

sys.exit(main())
