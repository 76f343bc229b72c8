"""Multi-stage tasks (``task=...``): methods that chain several Lightning fits, predictions and tests."""
