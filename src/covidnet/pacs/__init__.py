"""The clinical loop of the paper's Fig. 3: studies from a PACS, results back into it as DICOM, a worklist.

* :mod:`covidnet.pacs.params`: the ``pacs`` section of params.yaml;
* :mod:`covidnet.pacs.dicomweb`: the PACS over DICOMweb (QIDO-RS, WADO-RS, STOW-RS) with retries
  (:mod:`covidnet.pacs.retry`);
* :mod:`covidnet.pacs.ids`: keyed hashes for logs and tables, derived UIDs for what is stored;
* :mod:`covidnet.pacs.state`: which study was analysed (the ``pacs_studies`` table of the
  prediction log database);
* :mod:`covidnet.pacs.scorer`: the endpoint's code in-process, or a running endpoint;
* :mod:`covidnet.pacs.capture` (the overlay image, a Secondary Capture) and
  :mod:`covidnet.pacs.sr` (the Comprehensive SR);
* :mod:`covidnet.pacs.pipeline`: one study through the loop;
* :mod:`covidnet.pacs.watch` (``covidnet pacs watch``, QIDO-RS polling) and
  :mod:`covidnet.pacs.listen` (``covidnet pacs listen``, a C-STORE SCP);
* :mod:`covidnet.pacs.worklist` and :mod:`covidnet.pacs.page`: ``covidnet worklist`` and
  ``GET /covidnet/worklist``.

No patient identifier or UID is logged or stored: only
:func:`covidnet.monitor.predlog.hash_id` hashes with the prediction log's key.
"""
