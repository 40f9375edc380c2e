"""Prefect flows: the entry points ``prefect.yaml`` deploys (``flows/<name>.py:<name>_flow``).

Each flow is async, reads like a recipe of named tasks (``tasks/``), publishes a markdown artifact
and returns a typed summary. The logic they orchestrate lives in :mod:`tickvault`. Settings come
from the environment of the process running the flow (``TICKVAULT_*``), read once per run.
"""
