"""fer-diag: is a sparsity-as-familiarity signal trustworthy in this model?"""

__version__ = "0.1.0"
