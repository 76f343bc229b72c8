"""The stage runner, its four kinds of stage, the inference-only module protocols and the run report."""
