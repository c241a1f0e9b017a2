"""Build glue for the one C module (the metadata lives in pyproject.toml).

serfd.wire._lzw is optional: where no C compiler or Python headers exist the build goes
on without it and serfd.wire.lzw uses its pure-Python code (same bytes, slower).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("serfd.wire._lzw", ["serfd/wire/_lzw.c"], optional=True)])
