"""The released SigLino format (tiiuae/amoe): its configs, its state-dict names, loading and writing its checkpoints."""
