"""``python -m agent``: the same as ``baomi-agent`` (``run`` restarts itself this way)."""

import sys

from agent.cli import main

sys.exit(main())
