"""Federated methods, one module each, and the registry every other part reads.

Adding a method: one module with a :class:`Method` subclass decorated with
:func:`register_method` (imported before the run starts). The built-in ones are imported here.
"""

from fedra_core.methods.base import Method, MethodSettings
from fedra_core.methods.registry import get_method, method_names, register_method

from fedra_core.methods import fedra, alllarge, allsmall, inclusivefl, depthfl  # noqa: E402,F401  (registration)

__all__ = ["Method", "MethodSettings", "get_method", "method_names", "register_method"]
