"""Only the compiled extensions live here; all other metadata is in pyproject.toml.

Both are optional: without a C compiler the install still succeeds and each runs its pure-Python
path (same results, slower).

* ``tickvault._columnar`` (see ``tickvault.alpaca.columnar``): msgpack frames to binary COPY data;
* ``tickvault._indicators`` (see ``tickvault.indicators``): the incremental indicators (SMA, EMA, RSI,
  MACD, Bollinger bands, ATR, VWAP), ``IndicatorSet``'s one-call update, and the ATR and MACD array
  passes. ``-ffp-contract=off``: no ``a * b + c`` fused into one rounding (GCC's default
  contracts where the CPU has FMA), so the results are the Python twins' bits.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("tickvault._columnar", sources=["src/tickvault/_columnar.c"], optional=True),
        Extension("tickvault._indicators", sources=["src/tickvault/_indicators.c"], optional=True,
                  extra_compile_args=["-ffp-contract=off"]),
    ],
)
