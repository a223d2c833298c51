"""fer-diag: is a sparsity-as-familiarity signal trustworthy in this model?

``from fer_diag import Audit`` … ``Audit(model, hooks=[...], saes={...}, suite=...).run()`` → ``Report``.
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Audit": "fer_diag.audit",
    "AuditConfig": "fer_diag.audit",
    "Report": "fer_diag.report.schema",
    "load_model": "fer_diag.models",
    "Suite": "fer_diag.data.suite",
    "TextSet": "fer_diag.data.suite",
    "SetKind": "fer_diag.data.suite",
    "CompareConfig": "fer_diag.compare",
    "Comparison": "fer_diag.report.comparison",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:  # lazy: `fer-diag --help` need not import torch
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fer_diag' has no attribute {name!r}")
