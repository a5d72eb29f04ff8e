"""Access decisions on classified files: subjects, Casbin model and policy, a fast engine."""
