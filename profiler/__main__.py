"""``python -m profiler``."""
import sys

from .cli import main

sys.exit(main())
