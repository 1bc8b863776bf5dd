#!/usr/bin/env bash
# all-mpnet-base-v2 through the kurita2023 setup on 24 sentences (a superset of the 16): fixed rule, then adaptive float64.
set -u
export PYTHONPATH=/work/bg/code/src OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
PY=/work/main/.venv/bin/python
common=(all-mpnet-base-v2 --setup kurita2023 --num_sentences 24 --weighting.methods '[ig]' --measure '[weighting]')
cd /work/bg
/usr/bin/time -v $PY -c "import sys; from ctrain.cli import main; sys.argv[0]='ctrain'; sys.exit(main())" probe "${common[@]}" --out /work/bg/mpnet24/fixed > /work/bg/fixed24.log 2>&1
/usr/bin/time -v $PY -c "import sys; from ctrain.cli import main; sys.argv[0]='ctrain'; sys.exit(main())" probe "${common[@]}" --weighting.quadrature adaptive --weighting.ig_precision float64 --out /work/bg/mpnet24/adaptive > /work/bg/adaptive24.log 2>&1
