"""Multiple-instance learning algorithms that are not networks: attention-based hard-negative mining
(Li et al. Eq. 3), hard-negative bag generation (SB, MB, FMB; §3.0.3) and folds over bags.

Plain functions on arrays, free of Lightning: the mining callback, the bag-generation stage and the data
modules call them, and they are tested against hand-worked cases.
"""
