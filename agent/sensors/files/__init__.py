"""The secret-file guard: fanotify enforcement of Casbin decisions on labelled files."""
