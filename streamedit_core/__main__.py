"""`python -m streamedit_core ...`: see streamedit_core/cli.py."""
import sys

from .cli import main

sys.exit(main())
