"""Small helpers shared by the pipeline that talk to no outside system: environment values, secrets,
HTTP retry timing, argument checks. No Dagster import here except where a helper returns ``EnvVar``."""
