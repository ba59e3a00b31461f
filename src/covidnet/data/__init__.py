"""The cohort's data: manifest schema, DICOM headers and series selection, exclusion, split, flow, fetch."""
