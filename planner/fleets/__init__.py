"""Building fleets from data: the parts ``planner.fleet.make_fleet`` and what-if studies put together.

- :mod:`~hierfedlora.planner.fleets.datasets`: labelled texts without torch (WordNet noun glosses, CSV,
  JSONL) and a stratified split;
- :mod:`~hierfedlora.planner.fleets.data_sources`: every data set an experiment can name, read by one
  function (:mod:`~hierfedlora.planner.fleets.r_lazyload` reads an R package's data without R);
- :mod:`~hierfedlora.planner.fleets.partition`: the training rows split among devices (IID, Dirichlet,
  k classes per device);
- :mod:`~hierfedlora.planner.fleets.tiers`: device tiers from published figures (speed, memory, links);
- :mod:`~hierfedlora.planner.fleets.synthetic`: synthetic fleets with Dirichlet label skew, no data set;
- :mod:`~hierfedlora.planner.fleets.fleet_store`: the columnar ``.npz`` fleet file;
- :mod:`~hierfedlora.planner.fleets.fedscale`: FedScale device traces imported into a fleet.

``planner.fleet`` keeps the entry points (``make_fleet``, ``load_fleet``, ``save_fleet``, ``import_fedscale``), and
``hierfedlora.planner`` exports them and this package's public names. Nothing here imports a solver.
"""

from __future__ import annotations

__all__: list[str] = []
