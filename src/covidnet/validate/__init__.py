"""Data validation: the tables, the Great Expectations suites, their messages and the runner."""
