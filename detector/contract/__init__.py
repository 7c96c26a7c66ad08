"""What the trainer and every detector share, and nothing else.

`bundle` (the manifest and bundle I/O), `behaviour` (the behaviour-feature spec),
`categorical` (vocabularies and their coding), `events` (the anomaly event, score record and
dead-letter formats, the reasons), `drift` (the score reference a manifest carries).

Standard library, numpy and pydantic only: no Kafka client, no ONNX Runtime session, no state
store, so that reading a manifest loads none of them.
"""
