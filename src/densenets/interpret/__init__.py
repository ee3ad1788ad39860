"""Where a model looks: CAM and Grad-CAM heat maps (``densenets.explain``) and their overlays.

Named ``interpret``, not ``explain``: a subpackage ``densenets.explain`` would be shadowed by the
function ``densenets.explain``.
"""

from .maps import METHODS, explain, normalise, peak_cells

__all__ = ["METHODS", "explain", "normalise", "peak_cells"]
