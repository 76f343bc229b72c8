"""Glue between Hydra, Lightning and the file system."""
