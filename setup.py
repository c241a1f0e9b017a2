"""Build glue for the one C module (the metadata lives in pyproject.toml).

serfd.wire._lzw is optional: where no C compiler or Python headers exist the build goes
on without it and serfd.wire.lzw uses its pure-Python code (same bytes, slower).
"""

import os

from setuptools import Extension, setup

# SERFD_REQUIRE_C=1 (packaging/debian/rules) makes a failed build of it an error.
required = os.environ.get("SERFD_REQUIRE_C", "") not in ("", "0")
lzw = Extension("serfd.wire._lzw", ["serfd/wire/_lzw.c"], optional=not required,
                py_limited_api=True)  # the C file defines Py_LIMITED_API (3.11)
setup(ext_modules=[lzw])
