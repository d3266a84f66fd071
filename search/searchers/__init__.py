"""The built-in searchers. Importing this package imports every module in it, and each module registers
its searchers with `search.base.register`, so a new searcher is one new file here."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
