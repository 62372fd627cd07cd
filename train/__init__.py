"""Sample4Geo training (``python -m train``), evaluation (``python -m train.evaluate``) and checkpoints.

Public entry points:

- :mod:`train.model`: ``GeoModel``, ``load_checkpoint``, ``save_checkpoint`` (docs/CONTRACTS.md section 5);
- :mod:`train.config`: ``preset(name)`` (``sues200``, ``sues200-joint``, ``university1652``, ``geotiff``,
  ``demo``), ``apply_overrides(cfg, ["optim.lr=1e-4"])``, ``validate`` (refuses settings that do nothing);
- :mod:`train.trainer`: ``train(cfg) -> run_dir`` (final model at ``run_dir / "checkpoint.pt"``), in named
  steps (``build_run``, ``restore``, ``train_one_epoch``, ``end_of_epoch``, ``finish``);
- :mod:`train.evaluate`: ``evaluate_sues200``, ``evaluate_university1652`` (both protocols, labelled),
  ``evaluate_config``; :mod:`train.evaluate_geotiff`: ``evaluate_geotiff`` (uniform query positions);
- :mod:`train.build` (model, dataset, two-view forward), :mod:`train.run_dir`, :mod:`train.distributed`
  (process group, seeds per rank), :mod:`train.neighbours` and :mod:`train.mining` (hard negatives that
  are real negatives), :mod:`train.loss`, :mod:`train.samplers`, :mod:`train.datasets`,
  :mod:`train.augment`: the parts.
"""
