"""Run registry: `runs/<run_id>/` with params.yaml, metrics.jsonl, eval.json, checkpoints/, events.log."""
