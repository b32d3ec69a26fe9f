"""Moved to `python -m streamedit_core train-demo` (streamedit_core/train/recipe.py); this entry
point stays while scripts/demo.py does `from train_demo import EXPORT_NAME`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamedit_core.train.recipe import EXPORT_NAME, main  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
