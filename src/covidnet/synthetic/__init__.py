"""The SYNTHETIC demo cohort: anatomy phantoms in HU, findings, and their DICOM writer."""
