"""The daemon: `loop` (the pipeline, one batch at a time), `live` (the live model and what is
derived from it, replaced whole by a swap), `publish` (the records a batch sends), `service`
(start-up, shutdown and the wiring of the parts), `cli` (`vigil-detect`).
"""
