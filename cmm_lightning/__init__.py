"""cmm_lightning: Cooperative Market Making (CMM) on PyTorch Lightning.

Pipeline (one subpackage per stage, imports flow one way):
    data → teacher → probe → students → moe → market → pipeline/report
"""

__version__ = "0.1.0"
