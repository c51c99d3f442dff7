"""The installed package's version (pyproject.toml is the one place it is written)."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("qxaas")
except PackageNotFoundError:  # a checkout run without `pip install -e .` (make venv installs it)
    VERSION = "0+unknown"
