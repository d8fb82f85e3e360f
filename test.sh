#!/bin/sh
# Evaluate the best checkpoint (workspace/wb/best) on the cleaned usual_test, cleaning the data
# first when a raw test file has no cleaned copy, or is newer than it (so are the cleaning rules).
#
#   sh test.sh                                  # scores into workspace/wb/test
#   sh test.sh --dataset virus                  # workspace/wb_virus/best on virus_test
#   sh test.sh --model_dir workspace/offline/wb/best   # scores into workspace/offline/wb/test
#   sh test.sh --data_file data/clean/virus_test_labeled.txt --device cpu   # arguments pass through
#
# Relative paths in the arguments are relative to the folder you run it from.
set -e
REPO=$(cd "$(dirname "$0")" && pwd)

case " $* " in *" -h "*|*" --help "*) exec python "$REPO/test.py" --help ;; esac  # no cleaning

RAW=${EWECT_RAW_DIR:-$REPO/data/raw}
for NAME in usual_test_labeled.txt virus_test_labeled.txt; do
    CLEAN=$REPO/data/clean/$NAME  # missing, or older than its file or the rules
    if [ -f "$RAW/$NAME" ] && ! { [ "$CLEAN" -nt "$RAW/$NAME" ] &&
                                  [ "$CLEAN" -nt "$REPO/ewect/cleaning.py" ]; }; then
        python "$REPO/clean_data.py"
        break
    fi
done
exec python "$REPO/test.py" "$@"
