"""Scoring with a bundle: `scorer` (ONNX Runtime sessions, the golden-sample self-test,
decisions), `offline` (scoring a file), `registry` (published versions and CURRENT),
`watcher` (hot-swap: a new version checked on recent traffic before it goes live), `cpus`
(how many threads the process may use).
"""
