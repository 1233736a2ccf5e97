"""The perception report of any vision model (see hf_recperc/commands/report.py for the flags):

accelerate launch scripts/perception_report.py --model_name_or_path MODEL --dataset_name DATA --layers all
"""

import sys

from hf_recperc.commands.report import main

if __name__ == "__main__":
    sys.exit(main())
