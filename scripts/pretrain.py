"""Train a reconstruction model and watch its perception while it learns.

    accelerate launch scripts/pretrain.py                      # embedded digits, offline, about a minute on CPU
    accelerate launch scripts/pretrain.py --dataset_name uoft-cs/cifar10 --preset cifar-conv-small
    accelerate launch scripts/pretrain.py config.yaml          # every argument from a JSON or YAML file
    accelerate launch --multi_gpu --num_processes 2 scripts/pretrain.py   # two processes (GPUs, or gloo on CPU)

`python scripts/pretrain.py --help` lists the arguments; see docs/design.md ("training") for what is written.
"""

import sys

from hf_recperc.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
