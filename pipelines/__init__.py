"""The hdap pipeline (a readable DAG) and the two ways to use it: compile to IR YAML, run locally."""
