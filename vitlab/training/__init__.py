"""Training: the loop, its objectives and configs, the run folder, inside views, the zoo, sweeps and recipe studies."""
from . import config, evaluators, inside, loop, mpp, objectives, recipes, run_folder, steps, sweep, zoo
