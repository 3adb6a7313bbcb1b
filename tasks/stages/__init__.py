"""The DVC entry points: one module per stage of dvc.yaml (`python -m tasks.stages.<stage>`).

Each reads what the stage before it wrote under build/, calls the same stage functions
and task-type plug-in as the Prefect flow, and writes its outputs and metrics. This is
the only place a `main()` lives; nothing in tasks/ imports these modules.
"""
