"""Training: one loop (``loop``) for SPOS supernets (``train_supernet``) and retraining one arch (``retrain``).

    from nas.train import retrain, train_supernet
    result = train_supernet("psvit_tiny", data="builtin", recipe="demo")   # shipped names, or paths to YAML files
    result = retrain("runs/search/best.yaml", data="builtin")   # the shipped retrain_cpu on the built-in data

Modules: ``recipe`` (validated YAML recipes, default recipe per job and data), ``loop`` (the generic trainer:
optimiser, schedule, checkpoints, exact resume, signals, logs), ``sampler`` (which path trains each SPOS step),
``checkpoint`` (atomic, pickle-free checkpoints), ``rundir`` (run.json, lock, CSV log, for every job), ``spos``
(what is particular to supernets), ``retrain`` (what is particular to one arch).
"""
from nas.train.loop import Trainer, TrainResult, TrainState
from nas.train.recipe import Recipe, default_recipe, load_recipe
from nas.train.retrain import RetrainResult, retrain
from nas.train.spos import SposTrainer, train_supernet

__all__ = ["Recipe", "load_recipe", "default_recipe", "Trainer", "SposTrainer", "TrainResult", "TrainState",
           "train_supernet", "retrain", "RetrainResult"]
