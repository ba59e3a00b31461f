"""CLI: one module per command group; `covidnet STAGE` dispatch in one table."""
