"""The ROMA-FPGA notebooks, shipped as the package `roma_runtime.notebooks`.

This folder is the repository's top-level notebooks/ and, through the symbolic link
host/roma_runtime/notebooks -> ../../notebooks, also the package `roma_runtime.notebooks`: setuptools finds
it there and ships the .ipynb files as its package data (pyproject.toml), so an installed roma-runtime carries
them. The package is registered in the `pynq.notebooks` entry-point group, so on a PYNQ board

    pynq get-notebooks roma          # or: pynq get-notebooks -o roma  (without an overlay lookup)

copies them into ./pynq-notebooks/roma/ (PYNQ copies every file here except this __init__.py).
"""
