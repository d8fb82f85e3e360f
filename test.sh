#!/bin/sh
# Evaluate the best checkpoint (workspace/wb/best) on the cleaned usual_test.
#
#   sh test.sh
#   sh test.sh --data_file data/clean/virus_test_labeled.txt --device cpu   # arguments pass through
#
# Relative paths in the arguments are relative to the folder you run it from.
set -e
REPO=$(cd "$(dirname "$0")" && pwd)

RAW=${EWECT_RAW_DIR:-$REPO/data/raw}
if [ -f "$RAW/usual_test_labeled.txt" ] && [ ! -f "$REPO/data/clean/usual_test_labeled.txt" ]; then
    python "$REPO/clean_data.py"
fi
exec python "$REPO/test.py" "$@"
