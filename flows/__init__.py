"""Prefect flows over the stage registry (amoe_core.stages): curation, distillation, evaluation, the full pipeline,
the sweep and any single stage; `python flows/serve.py` serves them as deployments for the Prefect UI."""
