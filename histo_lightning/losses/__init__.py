"""Losses of the papers, as ``nn.Module`` criteria instantiated from the ``loss`` config group.

Plain cross-entropy (SMSE's "-" baseline, CHS-Net's "SM") is ``torch.nn.CrossEntropyLoss`` itself
(``conf/loss/cross_entropy.yaml``).
"""
