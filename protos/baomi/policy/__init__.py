"""The policy language both agent and collector read: the Casbin model and rules, the
subjects (people, roles, clearances, approved applications) and the errors that name a
policy file's line. The agent decides with it (agent/decision/engine.py); the collector
checks and publishes it."""

#: The characters a file name of a policy bundle may have (no path, no hidden file).
SAFE_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
