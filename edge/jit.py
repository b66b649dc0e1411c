"""Numba for the node's one compiled kernel, imported without SciPy.

The kernel is the log-mel frontend's high-pass filter (:func:`edge.kws_frontend.highpass`),
which only a node with the log-mel TACos keyword bundle runs; it calls :func:`load_numba` at its
first block. Importing this module does not import Numba: with the default bundles a node
never loads it (DTW and keyword spotting are NumPy; Numba's LLVM would cost about 100 MB).

Where SciPy is installed (it is, for calibration), Numba imports it twice over: ``import numba``
for a version check, and the first compilation or cache load (``numba.np.arraymath``)
``scipy.linalg.cython_blas``, so that ``np.dot`` and ``np.linalg`` work inside kernels. None of
our kernels uses them, and in a running node SciPy's linear algebra and its OpenBLAS cost about
17 MB of resident memory. This module imports Numba and ``numba.np.arraymath`` with SciPy
hidden from them, unless the process has imported SciPy already (a workstation, a test session
that imported librosa): then it changes nothing.

Consequence: in a process that imported this module before SciPy, a kernel that uses
``np.dot`` or ``np.linalg`` fails to compile ("scipy 0.16+ is required for linear algebra");
SciPy itself remains importable as usual. ``tests/test_node_imports.py`` checks that a node
runs both detectors without importing Numba, SciPy, scikit-learn or matplotlib.

* :func:`load_numba`: the module, imported on the first call; a kernel is defined with
  ``numba = load_numba()`` and ``@numba.njit`` (with ``cache=True``: a node loads the compiled kernel from its cache folder instead of
  compiling it at every start; ``python -m edge run`` puts it in ``numba-cache/`` next to
  the spool, see :mod:`edge.__main__`; elsewhere Numba's default, ``__pycache__``).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

__all__ = ["load_numba"]


@contextlib.contextmanager
def _scipy_hidden() -> Iterator[None]:
    """Make ``import scipy`` (and so every ``scipy.*``) fail inside the block, unless SciPy is
    imported already; afterwards SciPy imports as usual."""
    hide = "scipy" not in sys.modules
    if hide:
        sys.modules["scipy"] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        yield
    finally:
        if hide and sys.modules.get("scipy", ...) is None:
            del sys.modules["scipy"]


def load_numba():
    """Numba, imported with SciPy hidden (module docstring) on the first call.

    Returns
    -------
    module
        ``numba``.
    """
    with _scipy_hidden():
        import numba
        import numba.np.arraymath  # noqa: F401  # probes for SciPy's BLAS once, on import
    return numba
