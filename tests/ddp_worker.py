"""Run by tests/test_loop.py under torchrun: train, then save this rank's weights."""
import os
import sys

import safetensors.torch

from vitlab.training.config import TrainConfig
from vitlab.training.loop import train

out = sys.argv[1]
result = train(TrainConfig(model="vit_micro_c10", epochs=1, batch_size=32, eval_size=50), out, progress=False)
state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
safetensors.torch.save_file(state, os.path.join(out, f"rank{os.environ['RANK']}.safetensors"))
