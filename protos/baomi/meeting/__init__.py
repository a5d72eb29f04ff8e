"""Meeting rooms and schedules (rooms.toml, meetings.toml), radio sweep baselines, and
the signature of a meeting-room check: read by the agent's checks and the collector."""
