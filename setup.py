"""Only the compiled extension lives here; all other metadata is in pyproject.toml.

``tickvault._columnar`` (see ``tickvault.alpaca.columnar``) is optional: without a C compiler the
install still succeeds and the decoder runs its pure-Python path (same results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("tickvault._columnar", sources=["src/tickvault/_columnar.c"], optional=True),
    ],
)
