"""Pre-meeting checks of classified meeting rooms (会前保密检查) and the post-meeting sweep."""
