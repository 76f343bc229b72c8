"""Classifiers that are not networks, trained on cached features (no Lightning, no torch needed).

Kept apart from ``models/`` (LightningModules) so that the worker processes that train them import
neither Lightning nor the networks.
"""
