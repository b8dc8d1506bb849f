"""DuckDB, the `local` warehouse: config (spec model), dialect (SQL text) and adapter (the connection)."""
