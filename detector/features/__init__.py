"""From records and files to model inputs: one implementation for the trainer, the offline
scorer and the daemon.

`tables` (reading data files), `decode` (message bytes to a float32 matrix and reasons),
`behaviour` (per-entity behaviour features and their stores), `windows` (windows by
reference: each entity's rows once, and where each window ends).
"""
