"""bankflow: declarative CDC pipelines."""
