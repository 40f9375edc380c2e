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

Each job computes a result object (a dataclass), stores what it must in the database, and renders
itself for people (``to_markdown`` for the artifact, a ``log_line``/``headline`` for the run's
log); :mod:`tickvault.jobs.markdown` holds the formatting they share. The flows in ``flows/``
stay thin: tasks with retries around these functions, and the artifact.
"""
