"""The resilience harness, `docket chaos`, and what it feeds and checks against: the
workload generator (driving the configured domain's kit, app/domains/kit.py) and the
pure replay of the input topic (the oracle)."""
