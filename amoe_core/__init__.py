"""AMoE platform: curate, distill and evaluate agglomerative vision foundation models."""
