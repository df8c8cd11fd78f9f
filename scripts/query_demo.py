"""Show what a run wrote: query the three Parquet tables under OUT with DuckDB."""

from __future__ import annotations

import sys

import duckdb


def main(out: str) -> None:
    def table(name: str) -> str:
        return f"read_parquet('{out}/{name}/**/*.parquet', hive_partitioning = true)"

    print(duckdb.sql(f"SELECT source, status, duration_s, engine, model, words_n, error FROM {table('files')}"))
    print(duckdb.sql(f"SELECT source, segment_index, round(start, 2) AS start, round(\"end\", 2) AS \"end\", text "
                     f"FROM {table('segments')} ORDER BY source, start LIMIT 10"))
    print(duckdb.sql(f"SELECT word, round(start, 2) AS start, round(\"end\", 2) AS \"end\", round(probability, 2) AS p "
                     f"FROM {table('words')} ORDER BY source, start LIMIT 15"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
