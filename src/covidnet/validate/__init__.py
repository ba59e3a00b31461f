"""Data validation: the tables, the Great Expectations suites, their messages and the runner.

``tables`` (the frames GX sees), ``suites`` (:class:`ValidateParams` and the expectations as data),
``messages`` (failures and the report), ``gx`` (the only module that imports Great Expectations),
``cohort`` (:func:`validate_cohort`: all of them, one results folder) and ``stage`` (the DVC stage).
"""
