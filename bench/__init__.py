"""pgdr's benchmark suite: pgdr against pgBackRest, barman-cloud and pg_basebackup, measured in one run.

``python -m bench`` (from the repository root, with the venv's Python) or ``bench/run`` sets up its own
PostgreSQL cluster, repositories and S3 endpoint (moto) in a temp dir, runs every operation of issue 6,
cleans up, and writes ``bench/results/latest.json`` and ``latest.md``. It installs nothing: pgBackRest and
barman-cli-cloud come from apt in the set-up (see docs/bench.md).

Timings compare tools within one run only (the disk is cached by the host: absolute figures drift).
"""
