"""How training sets are drawn from a dataset: patch geometry, samplers of fixed proportions, pairs and triplets."""
