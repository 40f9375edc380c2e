"""The jobs behind tickvault's Prefect flows, as plain functions tests and scripts call directly.

===================  =====================================  ===========================
module               what it does                           flow
===================  =====================================  ===========================
``reconcile``        broker vs database: compare, repair    ``reconcile``
``indicators``       OHLCV refresh, vectorized indicators   ``refresh-indicators``
``retention``        ``drop_chunks`` past each window       ``purge-retention``
``profiling``        ``py-spy`` on the running worker       ``profile-worker``
``reports``          profile reports stored (S3 or local)   ``profile-worker``
``profile_report``   the profile artifact                   ``profile-worker``
``alerts``           incidents opened and resolved          ``alert-check``
===================  =====================================  ===========================

Each job keeps three kinds of function apart, and its run calls them in order:

* **compute** — pure functions over plain data (broker models, rows as tuples, numpy arrays): no
  connection, no network, no Prefect; ``tests/test_jobs_compute.py`` calls them on plain data.
  ``reconcile.diff_orders``/``diff_positions``/``missing_fill_diffs``, ``indicators.indicator_rows``,
  ``retention.plan_purge``, ``alerts.silent_workers``/``incident_changes``,
  ``profiling.summarize_speedscope``/``compare_reports``, ``reports.profile_row``;
* **store** — SQL, with the statements of :mod:`tickvault.db.tables` for every row a job writes
  (``reconcile.compare_and_repair`` reads, calls the compute steps, writes; ``indicators.load_bars`` /
  ``upsert_indicator_rows``; ``reports.record_profile_row``; ``alerts.check_alerts``);
* **report** — a result object (a dataclass) rendered for people: ``to_markdown`` for the Prefect
  artifact, ``headline``/``log_line`` for the run's log. Every markdown table goes through
  :func:`tickvault.jobs.markdown.table` (cells escaped, alignment declared), so no job builds one by hand.

The flows in ``flows/`` stay thin: tasks with retries around the run functions, then the artifact.
"""
