"""Several perception reports compared in one table and one figure (see hf_recperc/commands/report_table.py):

python scripts/report_table.py runs/a/report.json runs/b/report.json --output_dir comparison
"""

import sys

from hf_recperc.commands.report_table import main

if __name__ == "__main__":
    sys.exit(main())
