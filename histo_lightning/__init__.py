"""histo-lightning."""
