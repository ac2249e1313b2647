"""The test suite is a package: tests share code through :mod:`tests.helpers` with package-relative
imports (``from .helpers.books import random_book``), never by editing the module search path."""
