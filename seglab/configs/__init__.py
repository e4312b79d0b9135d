"""The training configs that ship with seglab, one YAML per model and dataset: ``<family>/<model>_<dataset>.yaml``.

They are package data (installed with the wheel); :mod:`seglab.recipes` lists them and finds one by name, so
``seglab train bisenetv2_cityscapes data.root=...`` works without the repository. docs/recipes.md says where
each recipe comes from and what the paper reports.
"""
