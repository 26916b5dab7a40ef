"""Federated methods, one module each, and the registry every other part reads.

Adding a method: one module with a :class:`Method` subclass (and, for knobs, its
:class:`MethodConfig`) decorated with :func:`register_method`, imported before the run starts. The
built-in ones are imported here.
"""

from fedra_core.methods.base import LocalRound, Method, MethodConfig
from fedra_core.methods.registry import (
    get_method, method_class, method_knobs, method_names, register_method, unregister_method,
)

from fedra_core.methods import fedra, alllarge, allsmall, inclusivefl, depthfl  # noqa: E402,F401  (registration)

__all__ = ["LocalRound", "Method", "MethodConfig", "get_method", "method_class", "method_knobs", "method_names", "register_method",
           "unregister_method"]
