"""COVIDNet MLOps: the core stages (cohort -> dicom -> validate -> exclude -> split -> preprocess).

Nothing is imported here: heavy packages load only in the stage that needs them.
"""

__version__ = "0.1.0"
