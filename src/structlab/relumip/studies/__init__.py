"""The relumip studies of ``structlab reproduce``: the paper's claims (Plate et al., arXiv 2502.03016,
Sec. 5) re-measured on its three benchmark problems, and a head-to-head against OMLT. One module per study:

* :mod:`~structlab.relumip.studies.peaks`: networks of depth 2-5 and width 25-50 trained on the peaks
  function (big-M growth with depth; interval vs LP bounds; rescaling), then every training lever on one
  architecture.
* :mod:`~structlab.relumip.studies.verification`: largest misclassification margin of Fashion-MNIST
  classifiers in L-inf balls.
* :mod:`~structlab.relumip.studies.reformer`: OMLT's autothermal-reformer surrogate, maximising H2 under the
  N2 limit.
* :mod:`~structlab.relumip.studies.omlt`: the same networks and instances encoded by OMLT (Pyomo, big-M)
  and by structlab.

What they share: :mod:`~structlab.relumip.studies.measure` (levers, plans, solving, the resumable cache),
:mod:`~structlab.relumip.studies.analysis` (paired statistics, claims, tables) and
:mod:`~structlab.relumip.studies.figures`.
"""

from structlab.relumip.studies import omlt, peaks, reformer, verification  # importing registers each study

__all__ = ["omlt", "peaks", "reformer", "verification"]
