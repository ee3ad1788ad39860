"""Analysis of models and runs: summaries, feature reuse, figures, reports."""
