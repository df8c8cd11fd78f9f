"""Pipeline stages: one module per DAG stage, plain functions plus a thin Prefect task."""
