"""The edit benchmark (`python -m streamedit_core eval`): pairs with exact ground truth, the
adherence classifier, metrics, the runner and the reports."""
