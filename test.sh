#!/bin/sh
# Evaluate the best checkpoint (workspace/wb/best) on the cleaned usual_test, cleaning the data
# first if a raw test file has no cleaned copy yet.
#
#   sh test.sh
#   sh test.sh --dataset virus                  # workspace/wb_virus/best on virus_test
#   sh test.sh --data_file data/clean/virus_test_labeled.txt --device cpu   # arguments pass through
#
# Relative paths in the arguments are relative to the folder you run it from.
set -e
REPO=$(cd "$(dirname "$0")" && pwd)

RAW=${EWECT_RAW_DIR:-$REPO/data/raw}
for NAME in usual_test_labeled.txt virus_test_labeled.txt; do
    if [ -f "$RAW/$NAME" ] && [ ! -f "$REPO/data/clean/$NAME" ]; then
        python "$REPO/clean_data.py"
        break
    fi
done
exec python "$REPO/test.py" "$@"
