"""The package's version, in one place: pyproject.toml reads it (``[tool.setuptools.dynamic]``), and
``densenets.__version__``, ``densenets --version`` and each run's config.json report it."""

__version__ = "0.1.0"
