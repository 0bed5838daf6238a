"""The book: the single SQLite store every stage reads and writes (see book/core.py for the layout).

Stage modules register their tables by importing ``register_component``; importing them here makes
every component known whenever the book is opened.
"""

from .core import STATUSES, Book, BookError, Component, Unit, component, register_component, section_renderer

__all__ = ["Book", "BookError", "Component", "Unit", "component", "register_component", "section_renderer",
           "STATUSES"]

# Every other module in this package is a stage's component: import them so their tables are known.
import importlib as _importlib
import pkgutil as _pkgutil

for _m in _pkgutil.iter_modules(__path__):
    if _m.name != "core":
        _importlib.import_module(f"{__name__}.{_m.name}")
