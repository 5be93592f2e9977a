"""Speed measurements, ``python -m icasc.bench <what>``: each prints one JSON object as its last stdout line.

One module per benchmark (:mod:`~icasc.bench.step`, :mod:`~icasc.bench.saliency`, :mod:`~icasc.bench.augment`,
:mod:`~icasc.bench.param_saliency`), the shared timing in :mod:`~icasc.bench.timing`, the command line in
``__main__.py``. Library code never imports this package; it is never used as a timed test.
"""

from icasc.bench.timing import interleaved_medians

__all__ = ["interleaved_medians"]
