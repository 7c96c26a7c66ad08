"""Per-entity state the loop carries from batch to batch: `windows` (the last W samples of
each entity, for windowed models) and `episodes` (alarm episodes: open, continue, close).
"""
