"""`elmbench throughput`: prefill and decode speed across backends, devices, norms and shapes.

plan (cases from a spec) -> measure / norm_bench (timed in a worker per backend) -> metrics
(records per case and metric) -> run (records on disk, resume) -> table (rows for people).
"""
