"""The study's experiments — the timing table (bench), accuracy vs speed (tradeoff, tune), scale, leakage, the report —
and `lookalike study` (pipeline), which runs them all.

`lookalike.study(data, out, …)` runs the whole study (lookalike.study.pipeline.study). The package is
callable so that the front door and the package holding the experiments can share the name the CLI
uses, while `lookalike.study.metrics` and the other modules still import as before.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """lookalike.study(data, out="runs/study", models=…, sizes=…, weights=…): see pipeline.study."""
        from .pipeline import study

        return study(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
