"""Runs docket on this machine: the local Kafka broker (`docket broker`, KRaft, from jars
fetched once) and the Procfile stack (`docket stack`, `make run`). Not part of the pipeline."""
