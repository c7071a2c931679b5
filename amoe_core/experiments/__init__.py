"""The paper's ablations as queued DVC experiments, and their collection into run directories for `amoe report`."""
