"""`python -m posttrain.convert --write`: field_types.json from the installed classes (posttrain.convert.check)."""

import sys

from posttrain.convert import check

if sys.argv[1:] != ["--write"]:
    raise SystemExit("usage: python -m posttrain.convert --write")
check.write()
