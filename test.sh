#!/bin/sh
# Evaluate the best checkpoint (workspace/wb/best) on the cleaned usual_test.
#
#   sh test.sh
#   sh test.sh --data_file data/clean/virus_test_labeled.txt --device cpu   # arguments pass through
set -e
cd "$(dirname "$0")"

if [ ! -f data/clean/usual_test_labeled.txt ]; then
    python clean_data.py
fi
exec python test.py "$@"
