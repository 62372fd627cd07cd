"""Sample4Geo training (``python -m train``), evaluation (``python -m train.evaluate``) and checkpoints.

Public entry points:

- :mod:`train.model`: ``GeoModel``, ``load_checkpoint``, ``save_checkpoint`` (docs/CONTRACTS.md section 5);
- :mod:`train.config`: ``preset(name)`` (``sues200``, ``university1652``, ``geotiff``, ``demo``),
  ``apply_overrides(cfg, ["optim.lr=1e-4"])``;
- :mod:`train.trainer`: ``train(cfg) -> run_dir`` (final model at ``run_dir / "checkpoint.pt"``);
- :mod:`train.evaluate`: ``evaluate_geotiff``, ``evaluate_sues200``, ``evaluate_university1652``,
  ``evaluate_config``;
- :mod:`train.loss`, :mod:`train.samplers`, :mod:`train.datasets`, :mod:`train.augment`: the parts.
"""
