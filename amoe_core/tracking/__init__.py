"""Run registry: `runs/<run_id>/` with params.yaml, dvclive/ (the curves), train.json, eval.json, checkpoints/, events.log."""
