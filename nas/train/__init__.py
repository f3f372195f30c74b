"""Training: SPOS supernet training with resumable atomic checkpoints (``train_supernet``), recipes.

    from nas.train import train_supernet
    result = train_supernet("spaces/psvit_tiny.yaml", data="builtin", recipe="recipes/demo.yaml")

Modules: ``recipe`` (validated YAML recipes), ``sampler`` (which path trains each step), ``checkpoint``
(atomic, pickle-free checkpoints), ``rundir`` (run.json, lock, CSV log), ``spos`` (the trainer).
"""
from nas.train.recipe import Recipe, load_recipe
from nas.train.spos import SposTrainer, TrainResult, TrainState, train_supernet

__all__ = ["Recipe", "load_recipe", "SposTrainer", "TrainResult", "TrainState", "train_supernet"]
