"""Reports: figures, per-run reports and cross-validation summaries laid out like the papers' tables."""
