"""Training: the loop, its objectives and configs, the run folder, inside views, the zoo, sweeps and recipe studies.

Imports from ``vitlab.analysis``, ``vitlab.models`` and the base modules; nothing here draws.
"""
from . import config, evaluators, inside, loop, mpp, objectives, recipes, run_folder, steps, sweep, zoo
